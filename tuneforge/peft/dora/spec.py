from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, knob
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class DoraSpec(LoraSpec):
    name: str = knob("dora", "weight-decomposed LoRA: a trained magnitude per output row (HF PEFT use_dora)")

    caps = Caps()  # reads each base weight matrix for its column norm, so the base stays in `precision.params`

    def trainable_estimate(self, parts):
        return None  # LoRA's count plus one magnitude per output row: not in footprint.Parts
