"""CorDA's defining properties on the tiny Llama, checked against an explicit SVD (arXiv 2406.05223, Sec. 3), and
KPM's covariance from the knowledge set's questions only, packed into windows (as the reference code builds it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.contracts.test_peft_family import Row, make, train
from tuneforge import registry
from tuneforge.models.layers import unwrap
from tuneforge.peft.base import MethodContext
from tuneforge.runner.model import build

QA = Path(__file__).resolve().parents[3] / "tuneforge" / "data" / "examples" / "qa.jsonl"
KNOWLEDGE = "peft.knowledge_data=pkg://tuneforge/data/examples/qa.jsonl"
R = 4


def row(mode: str, *more: str) -> Row:
    return Row(["peft=corda", f"peft.r={R}", f"peft.mode={mode}", "peft.n_samples=8",
                *([KNOWLEDGE] if mode == "kpm" else []), *more], r"\.lora_[AB]\.")


def originals(specs, tok):
    """The pretrained weights of every linear (the same seeded random init a build loads)."""
    from tuneforge.models.load import load_model

    torch.manual_seed(specs["trainer"].seed)
    base = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok))
    return {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, nn.Linear)}, base


def lora_layers(model):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "lora_A")}


def covariances(base, samples) -> dict[str, torch.Tensor]:
    """X^T X per linear over the calibration samples (token id lists; each sample's X scaled by its max, as the
    reference code does), averaged over the samples."""
    cov, hooks = {}, []
    for name, m in base.named_modules():
        if isinstance(m, nn.Linear):
            def hook(mod, args, out, name=name):
                x = args[0][0].float()
                x = x / x.max().abs()
                cov[name] = cov.get(name, 0) + x.T @ x
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        for s in samples:
            base.get_decoder()(input_ids=torch.tensor([s]))
    for h in hooks:
        h.remove()
    return {n: c / len(samples) for n, c in cov.items()}


def components_mismatch(model, weights, cov, mode) -> list[str]:
    """The linears whose (scaled B A) C is not the top-r (ipm) / bottom-r (kpm) part of an explicit SVD of W C,
    with C the damped covariance `cov` (as the reference code damps it); asserts residual + adapter == W."""
    layers, bad = lora_layers(model), []
    assert layers and len(layers) == len(weights) - 1  # every linear but the head
    for name, layer in layers.items():
        W, ab = weights[name], layer.scaling["default"] * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        torch.testing.assert_close(layer.base_layer.weight + ab, W, rtol=0, atol=1e-5)  # residual + adapter == W
        C = cov[name] + torch.eye(W.shape[1]) * cov[name].diag().mean() * 0.01
        U, S, Vh = torch.linalg.svd(W @ C, full_matrices=False)
        part = slice(0, R) if mode == "ipm" else slice(-R, None)
        want = U[:, part] @ torch.diag(S[part]) @ Vh[part]  # top-r (IPM) or bottom-r (KPM) components of W C
        same = torch.allclose(ab @ C, want, rtol=1e-3, atol=1e-3 * S[0].item())
        same = same and torch.allclose(torch.linalg.svdvals(ab @ C)[:R], S[part], rtol=1e-3, atol=1e-5)
        if not same:
            bad.append(name)
    return bad


@pytest.mark.parametrize("mode,more", [("ipm", []), ("kpm", ["peft.knowledge_text=pairs"])])
def test_adapter_plus_residual_is_w_and_takes_top_or_bottom_components(mode, more, tmp_path):
    model, method, _, specs, tok, ctx = make(row(mode, *more), tmp_path)
    weights, base = originals(specs, tok)
    cov = covariances(base, method.samples(ctx))  # the samples the method calibrated on (train data / QA rows)
    assert components_mismatch(model, weights, cov, mode) == []


def test_kpm_covariance_is_x_t_x_over_packed_question_windows(tmp_path):
    """KPM's C, by hand as the reference code builds it: the knowledge rows' questions only (no answers), joined
    by blank lines, tokenized, cut into consecutive 64-token windows (the tokenizer adds no BOS), one sample each;
    C = mean over windows of X^T X / max|X|^2 per linear. The adapter is the bottom-r part of W C for that C, and
    not for the C of whole QA rows (so the check tells the two apart)."""
    window = 64
    model, method, _, specs, tok, ctx = make(row("kpm", f"peft.knowledge_window={window}", "peft.n_samples=1000"),
                                             tmp_path)
    questions = [json.loads(line)["question"] for line in QA.read_text().splitlines() if line.strip()]
    ids = tok("\n\n".join(questions), add_special_tokens=False)["input_ids"]
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]  # no BOS to put first
    windows = [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)]
    assert len(windows) == len(ids) // window >= 8
    weights, base = originals(specs, tok)
    assert components_mismatch(model, weights, covariances(base, windows), "kpm") == []
    pairs = registry.build("peft", dataclasses.replace(specs["peft"], knowledge_text="pairs"))
    whole_rows = covariances(base, pairs.samples(ctx))
    assert components_mismatch(model, weights, whole_rows, "kpm")  # C from QA pairs gives another adapter


def test_rebuild_uses_the_cache_bit_identically(tmp_path):
    model, method, batch, specs, tok, ctx = make(row("ipm"), tmp_path)
    cached = list((tmp_path / "corda").glob("ipm_r4_*.pt"))
    assert len(cached) == 1
    before = {n: t.clone() for n, t in model.state_dict().items()}
    # eval/export rebuild a run with no training samples: only the cache can provide the decomposition
    offline = MethodContext(seed=ctx.seed, tokenizer=tok, run_dir=tmp_path, specs=specs)
    torch.manual_seed(specs["trainer"].seed)
    rebuilt, _ = build(specs, tok, offline)
    after = rebuilt.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(Exception, match="no calibration samples"):  # no cache for another rank: nothing to rebuild from
        build({**specs, "peft": type(specs["peft"])(**{**specs["peft"].__dict__, "r": 2})}, tok, offline)


def test_exported_adapter_loads_on_the_original_base(tmp_path):
    from peft import PeftModel

    model, method, batch, specs, tok, ctx = make(row("ipm"), tmp_path)
    train(model, method, batch)
    assert method.save_adapter(model, tmp_path / "adapter")
    _, base = originals(specs, tok)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    model.eval()
    with torch.no_grad():
        want, got = model(input_ids=batch["input_ids"]).logits, loaded(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert unwrap(loaded) is base
