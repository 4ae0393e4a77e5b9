from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.peft.miss.spec import BlockSpec


@dataclass
class BoneSpec(BlockSpec):
    name: str = knob("bone", "Bone (MiSS 'bat'): W0's r x r blocks updated by W_ij D_i + D_i (PEFT init_weights=bat)")
