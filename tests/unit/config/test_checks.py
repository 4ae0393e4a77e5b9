"""Cross-axis checks map capabilities declared by specs to constraints; no option is switched on by name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuneforge import registry
from tuneforge.config.checks import cross_axis_problems
from tuneforge.config.compose import build_specs, compose
from tuneforge.config.spec import Caps, knob
from tuneforge.errors import InputError
from tuneforge.peft.lora.spec import LoraSpec

PKG = Path(__file__).resolve().parents[3] / "tuneforge"
TINY = ["recipe=quickstart_tiny"]  # a random-init model
PRETRAINED = ["recipe=quickstart"]


@pytest.mark.parametrize("path", ["config/checks.py", "models/footprint.py"])
def test_no_option_is_named_in_checks_or_footprint(path):
    """Method knowledge lives in the method's folder: a registered tuning method, quantizer or optimizer named here
    quoted or as `group=name` fails this test, and so does a tuning method or quantizer named as a word or as part
    of an identifier. "none" is the off switch; "full" and "AdamW" are also plain words."""
    text = (PKG / path).read_text()
    identifiers = {w for ident in re.findall(r"[A-Za-z_]\w*", text) for w in ident.lower().split("_")}
    for group in ("peft", "quant", "optim"):
        for name in (n for n in registry.names(group) if n != "none"):
            quoted = re.search(rf"""["'=]{re.escape(name)}\b""", text, re.IGNORECASE)
            assert not quoted, f"{path} names {group}={name}: {quoted.group(0)!r}; declare a capability instead"
            if group != "optim" and name != "full":
                assert name not in identifiers and not re.search(rf"\b{name}\b", text, re.IGNORECASE), \
                    f"{path} mentions {group}={name}; declare a capability on its spec instead"


@pytest.mark.parametrize("overrides,fix", [
    # whole weights at build x quantized base / pretrained ZeRO-3
    ([*TINY, "peft=corda", "quant=nf4"], "but the base holds only 4-bit weights: use quant=none (4-bit bases are "
                                         "trained with peft=qlora)"),
    ([*PRETRAINED, "peft=corda", "zero=zero3"], "load straight into ZeRO-3 partitions (zero.Init): use zero=zero2"),
    ([*PRETRAINED, "peft=lst", "zero=zero3"], "use zero=zero2 (or zero2_offload), or set peft.init=random"),
    # whole weights in training x quantized base
    ([*TINY, "peft=switchlora", "quant=nf4"], "peft=switchlora with quant=nf4: its layers read and write whole "
                                              "weight matrices, but the base holds only 4-bit weights: use quant=none"),
    # trains base weights x quantized base
    ([*TINY, "peft=lisa", "quant=nf4"], "quant=nf4 with peft=lisa: quantized base weights cannot be trained; use an "
                                        "adapter method (e.g. peft=qlora), or quant=none"),
    # needs tasks; the method's own hook for its task list
    ([*TINY, "peft=mtlora"], "peft=mtlora needs multi-task data: set data.task_field=<field>"),
    ([*TINY, "peft=mtlora", "data.ops=[+,-]", "data.tasks=[add,sub]", "peft.tasks=[sub,add]"],
     "peft.tasks=['sub', 'add'] differs from data.tasks=['add', 'sub']"),
    # carries optimizer state x bf16 weights with 8-bit states
    ([*TINY, "peft=lisa", "optim=adamw8bit", "precision=bf16", "precision.params=bf16"],
     "needs zero=zero0 and fp32 weights (8-bit states are carried across layer switches only as whole "
     "per-parameter tensors): use optim=adamw, or zero=zero0"),
])
def test_capability_conflicts_name_the_fix(overrides, fix):
    with pytest.raises(InputError) as e:
        compose(overrides)
    assert len(e.value.problems) == 1 and fix in e.value.problems[0], e.value.render()


def test_every_demand_of_one_method_is_listed_together():
    with pytest.raises(InputError) as e:
        compose([*TINY, "peft=switchlora", "optim=adamw8bit", "zero=zero3_nvme", "zero.nvme_path=/tmp"])
    text = e.value.render()
    assert len(e.value.problems) == 4, text
    assert "does not support ZeRO-3" in text and "8-bit block-wise" in text and "swapped to NVMe" in text
    assert "optim=adamw8bit cannot run with ZeRO optimizer offload" in text  # the optimizer's own demand


@pytest.mark.parametrize("overrides", [
    [*TINY, "peft=lst", "zero=zero3"],  # a model built from its config is whole when the side network is pruned
    [*TINY, "peft=corda", "zero=zero3"],
    [*TINY, "peft=lisa", "optim=adamw8bit", "zero=zero0"],  # 8-bit states as whole tensors: ZeRO-0, fp32
    [*TINY, "peft=mtlora", "data.ops=[+,-]", "data.tasks=[add,sub]", "peft.tasks=[add,sub]"],
])
def test_combinations_within_the_constraints_compose(overrides):
    compose(overrides)


@dataclass
class _Rowwise(LoraSpec):
    """A method tuneforge has never heard of, declaring one capability."""

    name: str = knob("rowwise", "resets optimizer rows")
    caps = Caps(writes_optimizer_rows=True)


def test_a_new_method_gets_its_constraints_from_its_capabilities_alone():
    specs = build_specs(compose([*TINY, "optim=adamw8bit"]))
    assert cross_axis_problems(specs) == []
    specs["peft"] = _Rowwise()
    assert cross_axis_problems(specs) == ["peft=rowwise resets Adam moments row by row, which 8-bit block-wise "
                                          "states cannot do: use optim=adamw"]
