"""`peft=dora`: DoRA, Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024, arXiv 2402.09353), via HF PEFT
(`LoraConfig(use_dora=True)`).

Eq. (5): W' = m * (W0 + B A) / ||W0 + B A||_c, where ||.||_c is the column-wise norm (PEFT: per output
feature) and m, a trainable magnitude vector, starts at ||W0||_c; B A is LoRA's low-rank update ((alpha / r)
scaled). The norm is treated as a constant in backward (Sec. 4.3). Merging writes W' into the base weight.
"""

from __future__ import annotations

from tuneforge.peft.dora.spec import DoraSpec
from tuneforge.peft.lora.apply import Lora
from tuneforge.registry import register


@register("peft", "dora", config=DoraSpec)
class Dora(Lora):
    def extra(self):
        return {"use_dora": True}
