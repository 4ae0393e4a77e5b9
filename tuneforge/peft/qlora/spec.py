from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, knob
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class QLoraSpec(LoraSpec):
    name: str = knob("qlora", "LoRA on a k-bit base (needs quant=nf4, or quant=int8): HF PEFT + bitsandbytes")

    caps = Caps(needs_quantized_base="quant=nf4 (or quant=int8)", fix="use peft=lora")
