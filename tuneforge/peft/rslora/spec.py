from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class RsLoraSpec(LoraSpec):
    name: str = knob("rslora", "rank-stabilized LoRA: the update is scaled by alpha / sqrt(r) (HF PEFT use_rslora)")
    alpha: float = knob(16.0, "scaling numerator: the update is (alpha / sqrt(r)) * B @ A")
