"""The model-state terms of the memory plan (`tuneforge plan`, `tuneforge show`): the trainable set comes from the
methods' own estimates (exact counts are checked against real models in tests/unit/peft/test_lisa_unit.py); the
bytes are written here from the dtypes, the quantizers' storage and the optimizers' states."""

from __future__ import annotations

import pytest

from tuneforge.config.compose import build_specs, compose
from tuneforge.models.load import peek_config
from tuneforge.plan.estimate import Setting, Shape, breakdown


def terms(overrides, world=1):
    specs = build_specs(compose(["model=tiny_llama", *overrides]))
    return breakdown(specs, Shape.of(peek_config(specs["model"])), Setting.from_specs(specs, world))


@pytest.mark.parametrize("overrides,want", [
    (["peft=full"], "full fine-tuning"),
    (["peft=lora", "peft.r=4"], "LoRA r=4 all-linear"),
    (["peft=corda"], "corda (LoRA r=16 all-linear)"),  # inherits LoRA's estimate, under its own name
    (["peft=dora"], ""),  # declares none: planned as full fine-tuning (the plan says so)
    (["peft=lora", "peft.target_modules=[q_proj]"], ""),
])
def test_the_method_is_named_only_when_its_spec_estimates_its_trainable_set(overrides, want):
    assert terms(overrides)["method"] == want


def hand(overrides, world):
    """The plan's terms, and the model's parameter counts taken here from the model itself
    (built on the meta device): all parameters, and the decoder layers' linear weights (elements, output rows)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    specs = build_specs(compose(["model=tiny_llama", *overrides]))
    config = peek_config(specs["model"])
    row = terms(overrides, world)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    total = sum(p.numel() for p in model.parameters())
    return row, total, linears


def test_full_fp32_adamw_bytes_are_4_4_8_per_parameter():
    """fp32 weights 4 B, gradients 4 B, AdamW moments 8 B per parameter at ZeRO-0 on one rank (ZeRO's division and
    DeepSpeed's buckets: tests/unit/plan/test_planner.py)."""
    row, n, _ = hand(["peft=full"], 1)
    assert row["trainable"] == n
    assert (row["weights"], row["gradients"], row["optimizer"]) == (4 * n, 4 * n, 8 * n)


@pytest.mark.parametrize("quant,optim", [("int8", "ao_adamw8bit"), ("nf4", "ao_adamw4bit"), ("int8", "adamw8bit")])
def test_quantized_base_and_low_bit_states(quant, optim):
    """LoRA r=4 on a k-bit base: every decoder linear stored as codes + scales (int8: 1 B per weight and a 4 B row
    scale; NF4 with double quantization: 1/2 B per weight, a 1 B absmax per 64 weights and a 4 B scale per 256
    absmaxes), the rest of the model and the adapters in fp32; states: two moments of 1 B (8-bit) or 1/2 B (4-bit)
    per element plus a 4 B scale per block (torchao: 256 / 128 elements; bitsandbytes: 256)."""
    r = 4
    row, n, linears = hand([f"quant={quant}", "peft=qlora", f"peft.r={r}", f"optim={optim}"], 1)
    adapters = sum(r * (m.in_features + m.out_features) for m in linears)
    numel, rows = sum(m.weight.numel() for m in linears), sum(m.out_features for m in linears)
    stored = numel + 4 * rows if quant == "int8" else numel / 2 + numel / 64 + 4 * numel / 64 / 256
    assert row["trainable"] == adapters
    assert row["weights"] == pytest.approx(4 * (n - numel) + stored + 4 * adapters)
    assert row["gradients"] == 4 * adapters
    per_element = {"ao_adamw8bit": 2 * (1 + 4 / 256), "ao_adamw4bit": 2 * (0.5 + 4 / 128), "adamw8bit": 2 * (1 + 4 / 256)}
    assert row["optimizer"] == pytest.approx(adapters * per_element[optim])


def test_show_ends_with_the_memory_plan_under_the_chosen_quantization_and_optimizer(capsys):
    from tuneforge.cli import main

    assert main(["show", "recipe=int8_tiny", "optim=ao_adamw4bit", "zero=zero2", "trainer.nproc=2"]) == 0
    out = capsys.readouterr().out
    assert "memory plan per rank: recipe=int8_tiny, qlora (LoRA r=8 all-linear), 2 rank(s), ZeRO-2" in out
