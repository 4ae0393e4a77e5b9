from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, knob
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class QLoraSpec(LoraSpec):
    name: str = knob("qlora", "LoRA on a 4-bit NF4 base (needs quant=nf4): HF PEFT + bitsandbytes")

    caps = Caps(needs_quantized_base="quant=nf4", fix="use peft=lora")
