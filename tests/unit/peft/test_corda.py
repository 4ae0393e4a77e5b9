"""CorDA's defining properties on the tiny Llama, checked against an explicit SVD (arXiv 2406.05223, Sec. 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.contracts.test_peft_family import Row, make, train
from tuneforge.models.layers import unwrap
from tuneforge.peft.base import MethodContext
from tuneforge.runner.model import build

KNOWLEDGE = "peft.knowledge_data=pkg://tuneforge/data/examples/qa.jsonl"
R = 4


def row(mode: str) -> Row:
    return Row(["peft=corda", f"peft.r={R}", f"peft.mode={mode}", "peft.n_samples=8",
                *([KNOWLEDGE] if mode == "kpm" else [])], r"\.lora_[AB]\.")


def originals(specs, tok):
    """The pretrained weights of every linear (the same seeded random init a build loads)."""
    from tuneforge.models.load import load_model

    torch.manual_seed(specs["trainer"].seed)
    base = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok))
    return {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, nn.Linear)}, base


def lora_layers(model):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "lora_A")}


def covariances(base, samples) -> dict[str, torch.Tensor]:
    """X^T X per linear over the calibration samples (each sample scaled by its max, as the reference code does)."""
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
            base.get_decoder()(input_ids=torch.tensor([s.input_ids]))
    for h in hooks:
        h.remove()
    return {n: c / len(samples) for n, c in cov.items()}


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_adapter_plus_residual_is_w_and_takes_top_or_bottom_components(mode, tmp_path):
    model, method, _, specs, tok, ctx = make(row(mode), tmp_path)
    weights, base = originals(specs, tok)
    cov = covariances(base, method.samples(ctx))  # the samples the method calibrated on (train data / knowledge)
    layers = lora_layers(model)
    assert layers and len(layers) == len(weights) - 1  # every linear but the head
    for name, layer in layers.items():
        W, ab = weights[name], layer.scaling["default"] * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        torch.testing.assert_close(layer.base_layer.weight + ab, W, rtol=0, atol=1e-5)  # residual + adapter == W
        C = cov[name] + torch.eye(W.shape[1]) * cov[name].diag().mean() * 0.01  # damped as in the reference code
        U, S, Vh = torch.linalg.svd(W @ C, full_matrices=False)
        part = slice(0, R) if mode == "ipm" else slice(-R, None)
        want = U[:, part] @ torch.diag(S[part]) @ Vh[part]  # top-r (IPM) or bottom-r (KPM) components of W C
        torch.testing.assert_close(ab @ C, want, rtol=1e-3, atol=1e-3 * S[0].item())
        got_s = torch.linalg.svdvals(ab @ C)[:R]
        torch.testing.assert_close(got_s, S[part], rtol=1e-3, atol=1e-5)


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
