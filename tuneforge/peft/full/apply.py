"""`peft=full`: full fine-tuning, every parameter trained."""

from __future__ import annotations

from tuneforge.peft.base import TuningMethod
from tuneforge.peft.full.spec import FullSpec
from tuneforge.registry import register


@register("peft", "full", config=FullSpec)
class Full(TuningMethod):
    def apply(self, model, ctx):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
