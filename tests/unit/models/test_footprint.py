"""The memory table of `tuneforge show`: rows come from the methods' own estimates (exact counts are checked
against real models in tests/unit/peft/test_lisa_unit.py)."""

from __future__ import annotations

import pytest

from tuneforge import registry
from tuneforge.cli import MEMORY_BASELINES
from tuneforge.config.compose import build_specs, compose
from tuneforge.models import footprint
from tuneforge.models.load import peek_config


def rows(*overrides):
    specs = build_specs(compose(["model=tiny_llama", *overrides]))
    baselines = [registry.entry("peft", n).config() for n in MEMORY_BASELINES]
    return [(r["method"], r["chosen"]) for r in footprint.table(peek_config(specs["model"]), specs, 1, baselines)]


@pytest.mark.parametrize("overrides,want", [
    (["peft=full"], [("full fine-tuning", True), ("LoRA r=16 all-linear", False)]),
    (["peft=lora", "peft.r=4"], [("full fine-tuning", False), ("LoRA r=4 all-linear", True)]),
    (["peft=corda"], [("full fine-tuning", False), ("LoRA r=16 all-linear", False),
                      ("corda (LoRA r=16 all-linear)", True)]),  # inherits LoRA's estimate, under its own name
    (["peft=dora"], [("full fine-tuning", False), ("LoRA r=16 all-linear", False)]),  # declares none
    (["peft=lora", "peft.target_modules=[q_proj]"], [("full fine-tuning", False), ("LoRA r=16 all-linear", False)]),
])
def test_the_chosen_method_has_a_row_only_when_its_spec_estimates_one(overrides, want):
    assert rows(*overrides) == want


def hand(overrides, world):
    """The table's row for the chosen method, and the model's parameter counts taken here from the model itself
    (built on the meta device): all parameters, and the decoder layers' linear weights (elements, output rows)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    specs = build_specs(compose(["model=tiny_llama", *overrides]))
    config = peek_config(specs["model"])
    [row] = [r for r in footprint.table(config, specs, world, []) if r["chosen"]]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n]
    total = sum(p.numel() for p in model.parameters())
    return row, total, linears


@pytest.mark.parametrize("zero,world", [("zero0", 1), ("zero2", 2), ("zero3", 2)])
def test_full_fp32_adamw_bytes_are_4_4_8_per_parameter_divided_by_zero(zero, world):
    """fp32 weights 4 B, gradients 4 B, AdamW moments 8 B per parameter; from ZeRO-1 the engine keeps a 4 B fp32
    master copy beside the moments; ZeRO-1+ divides states over ranks, ZeRO-2+ gradients, ZeRO-3 weights."""
    row, n, _ = hand(["peft=full", f"zero={zero}"], world)
    stage = int(zero[-1])
    assert row["trainable"] == n
    assert row["weights"] == 4 * n / (world if stage == 3 else 1)
    assert row["gradients"] == 4 * n / (world if stage >= 2 else 1)
    assert row["optimizer"] == (8 + (4 if stage else 0)) * n / (world if stage else 1)
    assert row["total"] == row["weights"] + row["gradients"] + row["optimizer"]


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


def test_show_prints_the_table_under_the_chosen_quantization_and_optimizer(capsys):
    from tuneforge.cli import main

    assert main(["show", "recipe=int8_tiny", "optim=ao_adamw4bit", "zero=zero2", "trainer.nproc=2"]) == 0
    out = capsys.readouterr().out
    assert "2 rank(s), ZeRO-2, fp32 weights, quant=int8 base, optim=ao_adamw4bit" in out
    assert "> qlora (LoRA r=8 all-linear)" in out
