"""LISA pieces that need no engine: sampling, parameter partition, policies, config checks, footprint."""

from __future__ import annotations

import collections

import pytest
import torch

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.models import footprint
from tuneforge.models.load import peek_config
from tuneforge.peft.base import MethodContext, count, trainable
from tuneforge.peft.lisa.sampler import sample


def test_sampling_is_a_function_of_seed_and_period():
    assert sample(3, 7, 30, 2) == sample(3, 7, 30, 2)
    draws = [tuple(sample(3, p, 30, 2)) for p in range(50)]
    assert len(set(draws)) > 40 and all(len(set(d)) == 2 for d in draws)
    hits = collections.Counter(i for d in [sample(0, p, 6, 1) for p in range(3000)] for i in d)
    assert min(hits.values()) > 400 and max(hits.values()) < 600  # uniform: 500 each


def test_weighted_sampling_follows_weights():
    w = [1, 1, 1, 1, 50, 1]
    hits = collections.Counter(i for p in range(400) for i in sample(0, p, 6, 1, w))
    assert hits[4] > 0.85 * 400
    pairs = [sample(0, p, 6, 2, w) for p in range(200)]
    assert sum(4 in s for s in pairs) > 0.95 * 200 and all(len(set(s)) == 2 for s in pairs)


def lisa(*overrides):
    return registry.build("peft", build_specs(compose(["peft=lisa", *overrides]))["peft"])


@pytest.fixture
def deep_model(tiny_model_factory):
    return tiny_model_factory(0, "model.arch.num_hidden_layers=6")


def test_partition_and_policies(deep_model):
    m = lisa("peft.gamma=2")
    model = m.apply(deep_model, MethodContext(seed=1))
    names = {n for n, _ in trainable(model)}
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n}
    assert layers == set(m.active) and len(layers) == 2
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names  # tied head = embeddings
    assert [len(g["params"]) for g in m.param_groups(model)] == [2, 9, 9]  # always, then one group per layer


def test_frozen_embeddings_head_norm(tiny_model_factory):
    m = lisa("peft.embed=freeze", "peft.head=freeze", "peft.norm=freeze", "peft.gamma=1")
    model = m.apply(tiny_model_factory(0, "model.arch.num_hidden_layers=6"), MethodContext())
    assert all(".layers." in n for n, _ in trainable(model))


def test_tied_embeddings_conflict_is_a_config_error(deep_model):
    with pytest.raises(InputError, match="ties its input embeddings and LM head"):
        lisa("peft.embed=train", "peft.head=freeze").apply(deep_model, MethodContext())
    spec = build_specs(compose(["model=tiny_llama", "peft=lisa", "peft.head=freeze"]))
    problems = registry.entry("peft", "lisa").builder.check_model(spec["peft"], peek_config(spec["model"]))
    assert len(problems) == 1 and "tie" in problems[0]
    untied = build_specs(compose(["model=llama2_7b", "peft=lisa", "peft.head=freeze"]))
    assert registry.entry("peft", "lisa").builder.check_model(untied["peft"], peek_config(untied["model"])) == []


def target_inclusion(w: list[float], gamma: int) -> list[float]:
    """pi_l = min(1, c * w_l) with sum(pi) = gamma, c found by bisection (independent of the sampler's capping)."""
    lo, hi = 0.0, 1e12
    for _ in range(200):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if sum(min(1.0, c * x) for x in w) < gamma else (lo, c)
    return [min(1.0, hi * x) for x in w]


@pytest.mark.parametrize("gamma", [2, 3])
def test_weighted_inclusion_probabilities_are_proportional_to_weights(gamma):
    """Over many seeds, each layer is drawn with frequency gamma * w / sum(w) (capped at 1, excess spread),
    within Monte-Carlo error, for skewed weights; exactly gamma distinct layers each time."""
    w = [15.0, 5.0, 1.0, 1.0, 0.5, 0.2, 3.0, 0.1]
    pi = target_inclusion(w, gamma)
    assert abs(sum(pi) - gamma) < 1e-9 and max(pi) == 1.0  # layer 0 is capped in both cases
    n = 6000
    hits = collections.Counter()
    for seed in range(n):
        chosen = sample(seed, seed % 7, len(w), gamma, w)
        assert len(chosen) == gamma and len(set(chosen)) == gamma
        hits.update(chosen)
    for i, p in enumerate(pi):
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(hits[i] / n - p) <= 4.5 * sd + 1e-9, (i, hits[i] / n, p)


def test_equal_weights_give_uniform_inclusion():
    hits = collections.Counter(i for seed in range(3000) for i in sample(seed, 0, 6, 2, [0.3] * 6))
    assert all(abs(hits[i] / 3000 - 1 / 3) < 4.5 * (2 / 9 / 3000) ** 0.5 for i in range(6))


def layer_matrices(model, layer: int) -> list[torch.Tensor]:
    return [p for p in model.model.layers[layer].parameters() if p.dim() >= 2]


def plant(model, layer: int, rel: float, gen: torch.Generator) -> float:
    """Move the layer's weight matrices by a random direction of relative size `rel`; return the measured
    ||dW|| / ||W|| (computed here, from the weights before and after)."""
    mats = layer_matrices(model, layer)
    before = [m.detach().clone() for m in mats]
    dirs = [torch.randn(m.shape, generator=gen) for m in mats]
    scale = rel * sum(b.pow(2).sum() for b in before).sqrt() / sum(d.pow(2).sum() for d in dirs).sqrt()
    with torch.no_grad():
        for m, d in zip(mats, dirs):
            m.add_(scale * d)
    diff = sum((m.detach() - b).pow(2).sum() for m, b in zip(mats, before)).sqrt()
    return float(diff / sum(b.pow(2).sum() for b in before).sqrt())


def run_planted(model, rel: list[float], periods: int, period: int = 2, seed: int = 0, decay: float = 0.5,
                stop_at: int | None = None):
    """Drive LISA's hooks (no engine) for `periods` periods; each step, every active layer moves by rel[l] / period
    of its weights. Returns the method, the active sets, and the independent per-period movement of each layer."""
    from tuneforge.hooks import TrainContext

    m = lisa("peft.sampling=weighted", "peft.gamma=2", f"peft.period={period}", f"peft.importance_decay={decay}")
    m.apply(model, MethodContext(seed=seed))
    gen = torch.Generator().manual_seed(seed + 99)
    m.on_train_start(TrainContext(step=0))
    actives, moved = [], []
    for step in range(periods * period):
        if stop_at is not None and step == stop_at:
            return m, actives, moved
        m.on_step_start(TrainContext(step=step))
        if step % period == 0:
            actives.append(list(m.active))
            start = {i: [t.detach().clone() for t in layer_matrices(model, i)] for i in m.active}
        for i in m.active:
            plant(model, i, rel[i] / period, gen)
        if step % period == period - 1:
            moved.append({i: float(sum((a.detach() - b).pow(2).sum() for a, b in zip(layer_matrices(model, i), start[i])).sqrt()
                                    / sum(b.pow(2).sum() for b in start[i]).sqrt()) for i in start})
    return m, actives, moved


def test_importance_follows_measured_update_norms(deep_model):
    """The running estimate is the EMA of each layer's measured ||W_end - W_start|| / ||W_start|| per period per
    unit learning rate (no engine: 1 per step), computed here independently; layers that move more get more
    weight (and are drawn more often)."""
    rel = [0.002, 0.004, 0.08, 0.004, 0.002, 0.03]
    decay = 0.5
    m, actives, moved = run_planted(deep_model, rel, periods=40, decay=decay)
    expect: list[float | None] = [None] * 6
    for p, measured in enumerate(moved[:-1]):  # the last period's measurement happens at the next boundary
        assert set(measured) == set(actives[p])
        for i, r in measured.items():
            r = r / 2  # period = 2 steps at learning rate 1
            expect[i] = r if expect[i] is None else decay * expect[i] + (1 - decay) * r
    assert all(e is not None for e in expect)
    for i in range(6):
        assert m.importance[i] == pytest.approx(expect[i], rel=1e-4)
    w = m.layer_weights()
    assert max(range(6), key=lambda i: w[i]) == 2 and w[5] > w[3] > w[0]
    counts = collections.Counter(i for a in actives[5:] for i in a)
    assert counts[2] > counts[0] and counts[2] >= 0.8 * len(actives[5:])  # pi_2 = 1 once its estimate dominates


def test_unmeasured_layers_weigh_the_mean_of_measured(deep_model):
    m, actives, _ = run_planted(deep_model, [0.01] * 6, periods=2)
    measured = set(actives[0])
    w = m.layer_weights()
    known = [m.importance[i] for i in measured]
    for i in range(6):
        assert w[i] == pytest.approx(m.importance[i] if i in measured else sum(known) / len(known))
    assert len(set(actives[0])) == 2  # period 0: no measurement yet, all layers equal


def test_weighted_is_deterministic_under_the_seed(tiny_model_factory):
    rel = [0.002, 0.004, 0.08, 0.004, 0.002, 0.03]
    runs = [run_planted(tiny_model_factory(0, "model.arch.num_hidden_layers=6"), rel, periods=12, seed=s)
            for s in (3, 3, 4)]
    assert runs[0][1] == runs[1][1] and runs[0][0].importance == runs[1][0].importance
    assert runs[0][1] != runs[2][1]
    w = [0.5, 2.0, 0.1, 1.0, 3.0, 0.7]
    assert all(sample(5, p, 6, 3, w) == sample(5, p, 6, 3, w) for p in range(20))


def test_weighted_state_resumes_exactly_at_a_period_boundary(tiny_model_factory):
    """state_dict carries the estimate and the measurement under way: restored into a fresh method on the same
    weights, the next draws and estimates equal the uninterrupted run's."""
    import json

    from tuneforge.hooks import TrainContext

    rel = [0.002, 0.004, 0.08, 0.004, 0.002, 0.03]
    full, full_actives, _ = run_planted(tiny_model_factory(0, "model.arch.num_hidden_layers=6"), rel, periods=8)
    model = tiny_model_factory(0, "model.arch.num_hidden_layers=6")
    m, actives, _ = run_planted(model, rel, periods=8, stop_at=8)  # checkpoint after step 7 (end of period 3)
    state = json.loads(json.dumps(m.state_dict()))
    resumed = lisa("peft.sampling=weighted", "peft.gamma=2", "peft.period=2")
    resumed.apply(model, MethodContext(seed=0))
    resumed.load_state_dict(state)
    resumed.on_train_start(TrainContext(step=8))
    resumed.on_step_start(TrainContext(step=8))
    assert actives + [resumed.active] == full_actives[:5]
    m.on_step_start(TrainContext(step=8))
    assert resumed.importance == m.importance


def test_footprint_matches_real_parameter_counts(tiny_model_factory):
    specs = build_specs(compose(["model=tiny_llama", "model.arch.num_hidden_layers=6", "peft=lisa", "peft.gamma=2"]))
    parts = footprint.parts(peek_config(specs["model"]))
    model = tiny_model_factory(0, "model.arch.num_hidden_layers=6")
    assert parts.total == count(model)[1]
    lisa_model = registry.build("peft", specs["peft"]).apply(model, MethodContext())
    assert specs["peft"].trainable_estimate(parts)[1] == count(lisa_model)[0]
    lora_spec = build_specs(compose(["model=tiny_llama", "model.arch.num_hidden_layers=6", "peft=lora", "peft.r=4"]))["peft"]
    lora_model = registry.build("peft", lora_spec).apply(tiny_model_factory(0, "model.arch.num_hidden_layers=6"),
                                                          MethodContext())
    assert lora_spec.trainable_estimate(parts)[1] == count(lora_model)[0]


def test_lisa_cross_axis_checks():
    with pytest.raises(InputError, match="adamw8bit needs zero=zero0"):
        compose(["peft=lisa", "optim=adamw8bit", "zero=zero2"])
    with pytest.raises(InputError, match="NVMe"):
        compose(["peft=lisa", "zero=zero3_nvme", "zero.nvme_path=/tmp"])
