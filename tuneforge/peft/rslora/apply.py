"""`peft=rslora`: rank-stabilized LoRA (Kalajdzievski, 2023, arXiv 2312.03732), via HF PEFT
(`LoraConfig(use_rslora=True)`).

Theorem 3.2: LoRA's adapters stay rank-stable (neither collapsing nor exploding as r grows) only with the
scaling factor gamma_r = alpha / sqrt(r) instead of alpha / r, so h = W0 x + (alpha / sqrt(r)) B A x. Large
ranks then actually learn more. Everything else (init, merge) is LoRA.
"""

from __future__ import annotations

from tuneforge.peft.lora.apply import Lora
from tuneforge.peft.rslora.spec import RsLoraSpec
from tuneforge.registry import register


@register("peft", "rslora", config=RsLoraSpec)
class RsLora(Lora):
    def extra(self):
        return {"use_rslora": True}
