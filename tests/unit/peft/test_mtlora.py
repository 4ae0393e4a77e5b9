"""MTLoRA's defining properties (arXiv 2403.20320), each against a computation written here from the equations:
- `matrix` (default): the trunk (first L - k layers) carries only the shared adapter, so a sample's trunk hidden
  states do not depend on its task label (one trunk pass serves every task); in the last k layers a linear computes
  W0 x + (alpha / r_t) B_t A_t x for the sample's task t, with no shared term;
- `routed`: every linear computes W0 x + (alpha / r) B_s A_s x + (alpha / r_t) B_t A_t x, so the trunk is
  task-specific;
- per-sample gradients reach only the shared and the sample's own task modules; per-task eval rows; one merged
  model and one PEFT adapter per task."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.contracts.test_peft_family import Row, make, train
from tuneforge import registry
from tuneforge.data.encode import encode
from tuneforge.peft.routing import set_tasks
from tuneforge.runner import evaluate
from tuneforge.runner.objective import CausalLM

BASE = ["peft=mtlora", "peft.r=4", "peft.task_r=2", "data.ops=[+,-]", "data.tasks=[add,sub]"]
ROWS = {"matrix": Row(BASE, r""), "routed": Row([*BASE, "peft.mode=routed"], r"")}
ROW = ROWS["matrix"]


def grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    CausalLM(model)(**batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def trained(mode, tmp_path):
    model, method, batch, specs, tok, ctx = make(ROWS[mode], tmp_path)
    train(model, method, batch)  # B != 0, so every task's update is non-zero
    model.eval()
    assert set(batch["task_ids"].tolist()) == {0, 1}, "the batch should mix both tasks"
    return model, method, batch, specs, tok


def hidden_states(model, batch, task_ids) -> tuple[torch.Tensor, ...]:
    set_tasks(model, task_ids)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=True).hidden_states


def test_trunk_hidden_states_do_not_depend_on_the_task_label(tmp_path):
    """matrix: the hidden states entering the last k layers are bitwise the same whatever task the samples are
    labelled with (the trunk serves every task); the outputs differ. routed: already the first layer differs."""
    model, method, batch, specs, _ = trained("matrix", tmp_path)
    ids, L, k = batch["task_ids"], specs["model"].arch["num_hidden_layers"], specs["peft"].task_layers
    as_labelled, flipped = hidden_states(model, batch, ids), hidden_states(model, batch, 1 - ids)
    for i in range(L - k + 1):  # embeddings, then the output of each trunk layer (hidden_states[i] = out of i - 1)
        assert torch.equal(as_labelled[i], flipped[i]), f"trunk hidden state {i} depends on the task label"
    assert not torch.allclose(as_labelled[-1], flipped[-1])  # the task layers make the tasks differ
    # one prompt under every task in one batch: each copy gets the same trunk output
    one = {k_: v[:1].repeat(2, *[1] * (v.dim() - 1)) for k_, v in batch.items()}
    both = hidden_states(model, one, torch.tensor([0, 1]))
    torch.testing.assert_close(both[L - k][0], both[L - k][1], rtol=0, atol=1e-6)
    assert not torch.allclose(both[-1][0], both[-1][1])

    routed, _, rbatch, *_ = trained("routed", tmp_path / "routed")
    first = hidden_states(routed, rbatch, rbatch["task_ids"])[1], hidden_states(routed, rbatch, 1 - rbatch["task_ids"])[1]
    assert not torch.allclose(*first)  # routed: the first layer's output is already task-specific


def layer_of(name: str) -> int:
    return int(name.split("layers.")[1].split(".")[0])


@pytest.mark.parametrize("mode", ["matrix", "routed"])
def test_each_linear_and_the_model_compute_the_equations(mode, tmp_path):
    """Per sample of task t, each adapted linear computes, by hand from its frozen W0 (the pretrained weight) and
    the trained factors:  matrix: trunk W0 x + a/r B_s A_s x, last k layers W0 x + a/r_t B_t A_t x;
    routed: W0 x + a/r B_s A_s x + a/r_t B_t A_t x everywhere. A plain HF model with those weights gives the
    same logits as the adapted model on a batch mixing both tasks."""
    from tests.unit.peft.test_corda import originals

    model, method, batch, specs, tok = trained(mode, tmp_path)
    p, L = specs["peft"], specs["model"].arch["num_hidden_layers"]
    first_task_layer = L - p.task_layers if mode == "matrix" else 0
    weights, base = originals(specs, tok)
    params = dict(model.named_parameters())
    adapted = sorted({n.split(".shared_")[0].split(".task_")[0] for n in params if "_A." in n})
    assert len(adapted) == len(weights) - 1  # every linear but the head

    def update(name: str, t: int) -> torch.Tensor:
        """The weight update task t adds to linear `name`, from the equations."""
        def shared():
            return p.alpha / p.r * params[f"{name}.shared_B.weight"] @ params[f"{name}.shared_A.weight"]

        def own():
            return p.alpha / p.task_r * params[f"{name}.task_B.{t}.weight"] @ params[f"{name}.task_A.{t}.weight"]

        if layer_of(name) < first_task_layer:
            assert f"{name}.task_A.0.weight" not in params  # the trunk has no task modules
            return shared()
        if mode == "matrix":
            assert f"{name}.shared_A.weight" not in params  # matrix: no shared adapter in the task layers
            return own()
        return shared() + own()

    ids = batch["task_ids"]
    seen = {}
    trunk_name = next(n for n in adapted if layer_of(n) == 0 and n.endswith("down_proj"))
    task_name = next(n for n in adapted if layer_of(n) == L - 1 and n.endswith("q_proj"))
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, out, n=n: seen.__setitem__(n, (a[0].detach(), out.detach()))) for n in (trunk_name, task_name)]
    set_tasks(model, ids)
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, (x, y) in seen.items():
            for i, t in enumerate(ids.tolist()):
                want = x[i] @ (weights[name] + update(name, t)).T
                torch.testing.assert_close(y[i], want, rtol=1e-5, atol=1e-5, msg=f"{name} sample {i}")
        for t in (0, 1):
            plain = copy.deepcopy(base).eval()
            for name in adapted:
                plain.get_submodule(name).weight.copy_(weights[name] + update(name, t))
            want = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            keep = ids == t
            torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    assert isinstance(plain.get_submodule(task_name), nn.Linear)


@pytest.mark.parametrize("mode", ["matrix", "routed"])
def test_a_sample_only_touches_shared_and_its_task_modules(mode, tmp_path):
    model, method, batch, *_ = make(ROWS[mode], tmp_path)
    train(model, method, batch, steps=1)  # B != 0, so every A and B gets a gradient signal
    ids = batch["task_ids"]
    assert set(ids.tolist()) == {0, 1}, "the batch should mix both tasks"
    for t, other in ((0, 1), (1, 0)):
        keep = (ids == t).nonzero().flatten()
        g = grads(model, {k: v[keep] for k, v in batch.items()})
        assert all(g[n].abs().sum() > 0 for n in g if ".shared_" in n or f"_A.{t}." in n or f"_B.{t}." in n)
        assert all(torch.count_nonzero(g[n]) == 0 for n in g if f"_A.{other}." in n or f"_B.{other}." in n)
    # in a mixed micro-batch, each task's modules get exactly the gradient of that task's samples
    mixed = grads(model, batch)
    alone = grads(model, {k: v[ids == 0] for k, v in batch.items()})
    n0, n = int((ids == 0).sum()), len(ids)
    name = next(n for n in mixed if "_A.0." in n)
    tokens = lambda b: int((b["labels"][:, 1:] != -100).sum())  # noqa: E731 - the loss is a mean over trained tokens
    sub = {k: v[ids == 0] for k, v in batch.items()}
    torch.testing.assert_close(mixed[name] * tokens(batch), alone[name] * tokens(sub), rtol=1e-4, atol=1e-6)
    assert 0 < n0 < n


def test_per_task_eval_rows_and_per_task_merge(tmp_path):
    model, method, batch, specs, tok, ctx = make(ROW, tmp_path)
    train(model, method, batch)
    model.eval()
    data = specs["data"]
    loaded = registry.build("data", data).load(specs["trainer"].seed)
    samples = encode(loaded.eval, tok, data, loaded.report)
    row = evaluate.eval_loss(CausalLM(model), samples, 4, tok.pad_token_id, "cpu", torch.autocast("cpu", enabled=False),
                             data.tasks)
    assert {"eval_loss/add", "eval_loss/sub"} <= row.keys()
    em, _ = evaluate.exact_match(model, tok, loaded.eval, data, 4, 2, "cpu", torch.autocast("cpu", enabled=False), False)
    assert {"exact_match/add", "exact_match/sub"} <= em.keys()
    n = {t: sum(1 for ex in loaded.eval if ex.task == t) for t in ("add", "sub")}
    torch.testing.assert_close(em["exact_match"] * em["eval_n"],
                               sum(em[f"exact_match/{t}"] * n[t] for t in n), rtol=0, atol=1e-9)
    # the task models differ (each has its own adapter)
    ids = batch["input_ids"]
    with torch.no_grad():
        merged = {t: method.merged(model, t)(input_ids=ids).logits for t in ("add", "sub")}
    assert not torch.allclose(merged["add"], merged["sub"])


@pytest.mark.parametrize("mode", ["matrix", "routed"])
def test_per_task_peft_adapter_loads_and_matches(mode, tmp_path):
    from peft import PeftModel

    from tests.unit.peft.test_corda import originals

    model, method, batch, specs, tok = trained(mode, tmp_path)
    for task in ("add", "sub"):
        assert method.save_adapter(model, tmp_path / task, variant=task)
        _, base = originals(specs, tok)
        loaded = PeftModel.from_pretrained(base, str(tmp_path / task)).eval()
        method.use_variant(model, task)
        with torch.no_grad():
            want, got = model(input_ids=batch["input_ids"]).logits, loaded(input_ids=batch["input_ids"]).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
