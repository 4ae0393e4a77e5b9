from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob, positive
from tuneforge.peft.lora.spec import LoraSpec


@dataclass
class PissaSpec(LoraSpec):
    name: str = knob("pissa", "LoRA initialized from the principal singular vectors of W (HF PEFT init 'pissa')")
    alpha: float = knob(16.0, "scaling numerator (alpha / r); PiSSA's init already absorbs it (alpha = r is usual)")
    niter: int = knob(0, "0: exact SVD; > 0: fast randomized SVD with this many subspace iterations")

    def problems(self):
        return super().problems() + positive(self, "niter", allow_zero=True)
