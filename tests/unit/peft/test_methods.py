"""Which parameters each method trains."""

from __future__ import annotations

import pytest

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import RunError
from tuneforge.peft.base import MethodContext, count, trainable


def method(*overrides):
    return registry.build("peft", build_specs(compose(list(overrides)))["peft"])


def test_full_trains_everything(tiny_model_factory):
    model = method("peft=full").apply(tiny_model_factory(), MethodContext())
    n, total = count(model)
    assert n == total


def test_freeze_trains_only_named_layers_and_modules(tiny_model_factory):
    model = method("peft=freeze", "peft.layers=[-1]", "peft.modules=[model.norm.*]").apply(tiny_model_factory(), MethodContext())
    names = {n for n, _ in trainable(model)}
    assert names and all(n.startswith("model.layers.1.") or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names and any(n.startswith("model.layers.1.") for n in names)


def test_freeze_out_of_range_layer(tiny_model_factory):
    with pytest.raises(RunError, match="out of range"):
        method("peft=freeze", "peft.layers=[5]").apply(tiny_model_factory(), MethodContext())


def test_lora_trains_only_adapters_and_merges_exactly(tiny_model_factory):
    import torch

    m = method("peft=lora", "peft.r=4", "peft.dropout=0.0")
    model = m.apply(tiny_model_factory(), MethodContext())
    names = [n for n, _ in trainable(model)]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    with torch.no_grad():
        for _, p in trainable(model):
            p.add_(torch.randn_like(p) * 0.1)  # make B non-zero so merging matters
    x = torch.randint(0, 1000, (2, 12))
    model.eval()
    before = model(input_ids=x).logits
    merged = m.merged(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=x).logits, before, rtol=1e-5, atol=1e-5)
