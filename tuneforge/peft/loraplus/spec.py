from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob, positive
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class LoraPlusSpec(LoraSpec):
    name: str = knob("loraplus", "LoRA with a larger learning rate for B: lr_B = lr_ratio * optim.lr")
    lr_ratio: float = knob(16.0, "lambda = lr_B / lr_A (the paper recommends 2^4 for LLMs)")

    def problems(self):
        return super().problems() + positive(self, "lr_ratio")
