"""`peft=loraplus`: LoRA+ (Hayou et al., 2024, arXiv 2402.12354): LoRA whose B matrices learn faster.

Sec. 4 / Algorithm 1: with AdamW, set eta_B = lambda * eta_A (lambda >> 1; the paper recommends 2^4), since
feature learning in the infinite-width limit needs B's step to be Theta(1) while A's is Theta(1/n). HF PEFT has
this only as an optimizer factory (`peft.optimizers.create_loraplus_optimizer`); tuneforge's optimizer is built
by DeepSpeed from parameter groups, so the method returns the two groups itself (A and everything else at
optim.lr, B at lr_ratio * optim.lr). The LR schedule scales both, keeping the ratio at every step.
"""

from __future__ import annotations

from tuneforge.peft.base import trainable
from tuneforge.peft.lora.apply import Lora
from tuneforge.peft.loraplus.spec import LoraPlusSpec
from tuneforge.registry import register


def is_b(name: str) -> bool:
    return ".lora_B." in name or ".lora_embedding_B." in name


@register("peft", "loraplus", config=LoraPlusSpec)
class LoraPlus(Lora):
    def apply(self, model, ctx):
        self.lr = ctx.specs["optim"].lr if "optim" in ctx.specs else None
        return super().apply(model, ctx)

    def param_groups(self, model):
        if self.lr is None:
            raise ValueError("peft=loraplus needs optim.lr (MethodContext.specs['optim']) to set lr_B")
        params = trainable(model)
        return [{"params": [p for n, p in params if not is_b(n)]},
                {"params": [p for n, p in params if is_b(n)], "lr": self.lr * self.spec.lr_ratio}]
