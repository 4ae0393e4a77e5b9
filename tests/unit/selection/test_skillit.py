"""selection=skillit (Skill-it, arXiv 2307.14430): online mixture p ∝ p0 * exp(eta * A @ sum of windowed per-skill
held-out losses), recomputed every update_steps; the sampler's batches follow p."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from tests.conftest import train_here, train_losses
from tests.golden import runs as golden
from tuneforge.config.compose import compose
from tuneforge.data.batching import BatchPlan
from tuneforge.errors import InputError
from tuneforge.selection.skillit import counts, draw, mixture


def test_identity_graph_gives_softmax_of_eta_losses():
    losses, eta = [2.0, 0.5, 1.25, 3.0], 0.7
    got = mixture([1.0] * 4, [[float(i == j) for j in range(4)] for i in range(4)], [losses], eta)
    z = sum(math.exp(eta * v) for v in losses)
    assert got == pytest.approx([math.exp(eta * v) / z for v in losses], rel=1e-12)
    assert sum(got) == pytest.approx(1.0, abs=1e-12)
    # a window of several evaluations and a prior: p ∝ p0 * exp(eta * (L1 + L2))
    prior, later = [1.0, 2.0, 1.0, 0.5], [1.0, 1.0, 0.0, 2.0]
    got = mixture(prior, [[float(i == j) for j in range(4)] for i in range(4)], [losses, later], eta)
    raw = [p * math.exp(eta * (a + b)) for p, a, b in zip(prior, losses, later)]
    assert got == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)


def test_prerequisite_edge_shifts_mass_to_the_prerequisite():
    """Skill 0 helps skill 1 (A[0][1] > 0) and skill 1's loss is high: skill 0 gets more mass than without the edge,
    exactly exp(eta * A[0][1] * L1) times more in odds."""
    losses, eta = [1.0, 4.0], 0.5
    plain = mixture([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], [losses], eta)
    edge = mixture([1.0, 1.0], [[1.0, 0.5], [0.0, 1.0]], [losses], eta)
    assert edge[0] > plain[0] and sum(edge) == pytest.approx(1.0)
    assert (edge[0] / edge[1]) / (plain[0] / plain[1]) == pytest.approx(math.exp(eta * 0.5 * 4.0))


def test_sampler_realises_the_mixture():
    p, total = [0.2, 0.5, 0.3], 200
    n = counts(p, total)
    assert sum(n) == total and all(abs(c - v * total) < 1 for c, v in zip(n, p))
    pools = [list(range(0, 50)), list(range(50, 90)), list(range(90, 300))]
    chosen = draw(pools, n, seed=3, step=10)
    skill = {i: s for s, pool in enumerate(pools) for i in pool}
    got = Counter(skill[i] for i in chosen)
    assert all(abs(got[s] / total - p[s]) <= 1 / total for s in range(3))
    assert len(set(i for i in chosen if skill[i] == 0)) == 40  # a pool is used up before a sample repeats
    assert Counter(i for i in chosen if skill[i] == 1).most_common(1)[0][1] == 3  # skill 1: 100 from 40 samples
    assert chosen == draw(pools, n, seed=3, step=10) != draw(pools, n, seed=3, step=12)


def test_spec_checks_name_data_tasks():
    with pytest.raises(InputError) as e:
        compose(["selection=skillit", "trainer.max_steps=10"])
    assert "data.tasks" in e.value.render() and "task_field" in e.value.render()
    with pytest.raises(InputError) as e:
        compose(["selection=skillit", "data.ops=[+,-]", "data.tasks=[add,sub]", "selection.graph=[[1,0,0],[0,1,0]]",
                 "trainer.max_steps=-1"])
    text = e.value.render()
    assert "not 2 x 2" in text and "trainer.max_steps" in text


def test_learned_graph_leaves_the_model_untouched(tokenizer, tiny_model_factory):
    """graph=learn trains a copy of the trainable weights: the model's parameters stay bitwise the same, and a skill
    trained on lowers its own held-out loss (positive diagonal)."""
    import torch

    from tuneforge.config.compose import build_specs
    from tuneforge.data.encode import encode
    from tuneforge.data.rows import Example, RowReport
    from tuneforge.selection.skillit import SkillitSpec, learn_graph

    model = tiny_model_factory(0).eval()
    data = build_specs(compose(["model=tiny_llama"]))["data"]
    groups = [["1 + 2 = 3", "4 + 4 = 8", "5 + 1 = 6", "2 + 7 = 9"], ["cat dog", "dog cat", "cat cat dog", "dog dog"]]
    samples = [encode([Example(text=t) for t in g], tokenizer, data, RowReport()) for g in groups]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = SkillitSpec(learn_steps=3, learn_lr=1e-2, learn_batch=2)
    graph = learn_graph(model, samples, samples, spec, tokenizer.pad_token_id, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(v >= 0 for row in graph for v in row) and graph[0][0] > 0 and graph[1][1] > 0


def test_skillit_run_updates_and_the_batches_follow_the_mixture(tmp_path):
    """skillit_tiny (quickstart add + sub, learned graph, update every 2 of 6 steps): each update's weights are
    p ∝ exp(eta * A @ sum of the last `window` recorded losses) (round 0: losses of 1), and each round's batches
    hold the skills in those proportions."""
    run = train_here(*golden.ARGS["skillit_tiny"], out=tmp_path / "run")
    golden.check("skillit_tiny", train_losses(run))
    state = json.loads((run / "selection/skillit.json").read_text())
    skill = {i: s for s, pool in enumerate(state["train"]) for i in pool}
    held = {i for pool in state["held"] for i in pool}
    recs = [json.loads((run / f"selection/step_{s}.json").read_text()) for s in (0, 2, 4)]
    eta, window, world_batch = 0.5, 3, 4  # skillit_smollm2 / skillit_tiny: eta, window, micro_batch_size x 1 rank
    for t, rec in enumerate(recs):
        losses = [[1.0, 1.0]] if t == 0 else [r["losses"] for r in recs[: t + 1]][-window:]
        raw = [math.exp(eta * sum(rec["graph"][i][j] * sum(v[j] for v in losses) for j in range(2))) for i in range(2)]
        assert rec["weights"] == pytest.approx([r / sum(raw) for r in raw], rel=1e-9)
        assert not held & set(rec["chosen"])  # held-out samples are never trained on
        plan = BatchPlan(len(rec["chosen"]), world_batch, 1, 1, 0)
        seen = Counter(skill[rec["chosen"][k]] for s in range(2 * t, 2 * t + 2) for k in plan.global_batch_indices(s))
        assert sum(seen.values()) == 8 and all(abs(seen[i] / 8 - rec["weights"][i]) <= 1 / 8 for i in range(2))
    assert recs[0]["losses"] != recs[2]["losses"]  # measured on the model as it trains
