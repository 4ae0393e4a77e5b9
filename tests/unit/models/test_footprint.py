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
