"""The contract every tuning method joins with one row (ARCHITECTURE rule 7).

For each row, on the tiny Llama built the way a run builds it (load -> quantize -> apply method):
- only the intended parameters are trainable, and training changes exactly those: every other tensor of the
  model (weights and buffers) stays bitwise equal;
- the loss sequence is deterministic under a fixed seed (two builds, bitwise equal);
- save -> load round trip: the trained weights saved by name and loaded into a freshly rebuilt model reproduce
  its outputs exactly (this is what `tuneforge eval/export` do);
- merged == unmerged outputs within 1e-5 (fp32) where the method merges into the base weights;
- a real run under DeepSpeed ZeRO-2 with 2 ranks (gloo on CPU) trains and exports a model that
  `AutoModelForCausalLM.from_pretrained` loads and that reproduces the run's own logits. A method that cannot
  merge and exports its own format (`hf_export=False`) is loaded with its `load_export` onto a plainly loaded
  base model instead, and `tuneforge eval run_dir=...` must reproduce the run's final eval.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest
import torch

from tests.conftest import ok, run_dir_of, summary, tuneforge
from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.data.batching import collate
from tuneforge.data.encode import encode
from tuneforge.models.load import load_tokenizer
from tuneforge.peft.base import MethodContext, trainable
from tuneforge.runner.model import build
from tuneforge.runner.objective import CausalLM
from tuneforge.runner.weights import load_named, save_named


@dataclass
class Row:
    overrides: list[str]  # selects and sizes the method (and anything it needs: quant, data, ...)
    trains: str  # regex searched in every trainable parameter name: what the method may change
    merges: bool = True  # method.merged(model) folds the method into plain weights
    run: list[str] = field(default_factory=list)  # extra overrides for the 2-rank ZeRO-2 run only
    zero2: bool = True  # False only where tests/integration/test_train.py already runs it under ZeRO-2 x 2 ranks
    hf_export: bool = True  # False: export is the method's own format (method.load_export), not a plain HF model


ROWS: dict[str, Row] = {
    "full": Row(["peft=full"], r".", merges=False, zero2=False),
    "freeze": Row(["peft=freeze", "peft.layers=[-1]"], r"^model\.layers\.1\.", merges=False, zero2=False),
    "lora": Row(["peft=lora", "peft.r=4"], r"\.lora_[AB]\."),
    "lst": Row(["peft=lst"], r"\.side\.", merges=False, hf_export=False),
}

TINY = ["recipe=quickstart_tiny", "trainer.eval_at_start=false"]
STEPS = 3


def specs_of(row: Row) -> dict:
    return build_specs(compose([*TINY, *row.overrides]))


def make(row: Row, tmp_path=None):
    """(model, method, batch) built exactly as a run builds them."""
    specs = specs_of(row)
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(specs["trainer"].seed)
    samples = encode(loaded.train[:16], tok, specs["data"], loaded.report)
    ctx = MethodContext(seed=specs["trainer"].seed, tokenizer=tok, train_samples=samples, run_dir=tmp_path, specs=specs)
    torch.manual_seed(specs["trainer"].seed)
    model, method = build(specs, tok, ctx)
    return model, method, collate(samples[:4], tok.pad_token_id), specs, tok, ctx


def train(model, method, batch, steps: int = STEPS) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(method.param_groups(model), lr=1e-2)
    objective, losses = CausalLM(model), []
    model.train()
    for step in range(steps):
        method.on_step_start(step, None)
        loss = objective(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def tensors(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@pytest.fixture(params=list(ROWS))
def row(request):
    return request.param, ROWS[request.param]


def test_only_intended_parameters_change(row, tmp_path):
    name, r = row
    model, method, batch, *_ = make(r, tmp_path)
    names = [n for n, _ in trainable(model)]
    assert names, f"{name}: nothing is trainable"
    unintended = [n for n in names if not re.search(r.trains, n)]
    assert not unintended, f"{name}: unintended trainable parameters {unintended[:5]}"
    before = tensors(model)
    losses = train(model, method, batch)
    after = tensors(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, f"{name}: training changed nothing"
    wrong = sorted(n for n in changed if not re.search(r.trains, n))
    assert not wrong, f"{name}: tensors outside the method changed: {wrong[:5]}"
    assert all(loss == loss for loss in losses)


def test_loss_is_deterministic_under_a_seed(row, tmp_path):
    name, r = row
    runs = []
    for i in range(2):
        model, method, batch, *_ = make(r, tmp_path / str(i))
        runs.append(train(model, method, batch))
    assert runs[0] == runs[1], f"{name}: {runs}"


def test_save_load_round_trip(row, tmp_path):
    name, r = row
    model, method, batch, specs, tok, ctx = make(r, tmp_path)
    train(model, method, batch)
    path = tmp_path / "trainable.safetensors"
    save_named(model, path, method.trained_names(model))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
    torch.manual_seed(specs["trainer"].seed)
    rebuilt, method2 = build(specs, tok, ctx)
    method2.load_state_dict(method.state_dict())
    load_named(rebuilt, path, method.trained_names(model))
    rebuilt.eval()
    with torch.no_grad():
        got = rebuilt(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_merged_equals_unmerged(row, tmp_path):
    name, r = row
    if not r.merges:
        pytest.skip(f"{name} does not merge")
    model, method, batch, *_ = make(r, tmp_path)
    train(model, method, batch)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
        merged = method.merged(model)
        got = merged(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_zero2_two_ranks_trains_and_exports(row, tmp_path):
    """A real 2-rank ZeRO-2 run; the exported model loads in plain transformers and gives the run's logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    name, r = row
    if not r.zero2:
        pytest.skip(f"{name}: covered by tests/integration/test_train.py")
    proc = ok(tuneforge("train", *TINY, *r.overrides, *r.run, "trainer.nproc=2", "zero=zero2", "trainer.max_steps=2",
                        "trainer.micro_batch_size=2", "data.n_eval=2", "trainer.max_new_tokens=2", cwd=tmp_path))
    run = run_dir_of(proc)
    assert summary(run)["status"] == "completed"
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    probe = load_file(str(run / "final" / "probe.safetensors"))
    if r.hf_export:
        model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    else:
        model = exported(run).eval()
        ok(tuneforge("eval", f"run_dir={run}", cwd=tmp_path))
        got, final = json.loads((run / "eval.json").read_text()), summary(run)["eval"]
        assert got["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
        assert got["exact_match"] == final["exact_match"] and got["eval_n"] == final["eval_n"]
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-4, atol=1e-4)


def exported(run):
    """A method's own export format, loaded onto the run's base model loaded plainly (no tuneforge build)."""
    from tuneforge.config.compose import load_run_config
    from tuneforge.models.load import load_model

    specs = build_specs(load_run_config(run))
    base = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(load_tokenizer(specs["model"])))
    return registry.build("peft", specs["peft"]).load_export(base, run / "export")
