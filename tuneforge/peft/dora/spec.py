from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class DoraSpec(LoraSpec):
    name: str = knob("dora", "weight-decomposed LoRA: a trained magnitude per output row (HF PEFT use_dora)")

    def trainable_estimate(self, parts):
        return None  # LoRA's count plus one magnitude per output row: not in footprint.Parts
