"""`quant=none`: weights stay in their training precision."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob
from tuneforge.quant import Quantizer
from tuneforge.registry import register


@dataclass
class NoQuantSpec(Spec):
    name: str = knob("none", "no quantization")


@register("quant", "none", config=NoQuantSpec)
class NoQuant(Quantizer):
    pass
