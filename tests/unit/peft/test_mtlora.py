"""MTLoRA's defining properties (arXiv 2403.20320): per-sample routing to shared + own-task modules, per-task
evaluation rows, and one merged model + one PEFT adapter per task."""

from __future__ import annotations

import torch

from tests.contracts.test_peft_family import Row, make, train
from tuneforge import registry
from tuneforge.data.encode import encode
from tuneforge.runner import evaluate
from tuneforge.runner.objective import CausalLM

ROW = Row(["peft=mtlora", "peft.r=4", "peft.task_r=2", "data.ops=[+,-]", "data.tasks=[add,sub]"], r"")


def grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    CausalLM(model)(**batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_sample_only_touches_shared_and_its_task_modules(tmp_path):
    model, method, batch, *_ = make(ROW, tmp_path)
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
    # the task models differ (each has its own adapter) and each merged model equals the routed one
    ids = batch["input_ids"]
    with torch.no_grad():
        merged = {t: method.merged(model, t)(input_ids=ids).logits for t in ("add", "sub")}
    assert not torch.allclose(merged["add"], merged["sub"])


def test_per_task_peft_adapter_loads_and_matches(tmp_path):
    from peft import PeftModel

    from tests.unit.peft.test_corda import originals

    model, method, batch, specs, tok, ctx = make(ROW, tmp_path)
    train(model, method, batch)
    model.eval()
    for task in ("add", "sub"):
        assert method.save_adapter(model, tmp_path / task, variant=task)
        _, base = originals(specs, tok)
        loaded = PeftModel.from_pretrained(base, str(tmp_path / task)).eval()
        method.use_variant(model, task)
        with torch.no_grad():
            want, got = model(input_ids=batch["input_ids"]).logits, loaded(input_ids=batch["input_ids"]).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
