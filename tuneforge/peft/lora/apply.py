"""`peft=lora`: LoRA (Hu et al., 2021, arXiv 2106.09685) through Hugging Face PEFT.

Eq. (3): h = W0 x + (alpha / r) * B A x, with A (r x k) random and B (d x r) zero at init, so training starts
from the pretrained function; W0 is frozen. Merging adds (alpha / r) * B A into W0 (export).
"""

from __future__ import annotations

from tuneforge.models.targets import target_names
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.lora.spec import LoraSpec
from tuneforge.registry import register


@register("peft", "lora", config=LoraSpec)
class Lora(TuningMethod):
    """Plain LoRA; the variants (dora, rslora, pissa, loraplus, qlora) subclass it and change `extra()` (more
    LoraConfig fields) and where needed `param_groups` / `merged`."""

    def extra(self) -> dict:
        return {}

    def lora_config(self, model, **extra):
        from peft import LoraConfig

        s = self.spec
        return LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=target_names(model, s.target_modules),
                          bias=s.bias, modules_to_save=list(s.modules_to_save) or None, task_type="CAUSAL_LM", **extra)

    def apply(self, model, ctx):
        from peft import get_peft_model

        return get_peft_model(model, self.lora_config(model, **self.extra()))

    def merged(self, model):
        return model.merge_and_unload()

    def save_adapter(self, model, path):
        model.save_pretrained(str(path))
        return True
