"""`peft=qlora`: QLoRA (Dettmers et al., 2023, arXiv 2305.14314): LoRA adapters trained through a frozen 4-bit
NF4 base, via HF PEFT (LoRA's bitsandbytes `Linear4bit` layer) on `quant=nf4`; the same adapters train on an
LLM.int8() base (`quant=int8`, PEFT's `Linear8bitLt` LoRA layer), as in the paper's 8-bit baselines.

Eq. (5): Y = X doubleDequant(c1, c2, W_nf4) + s X L1 L2, with the base dequantized to the compute dtype (bf16
in the paper, fp32 on CPU) on the fly and gradients flowing only into the LoRA factors L1, L2 (s = alpha / r).
The model is first prepared for k-bit training (`peft.prepare_model_for_kbit_training`: base frozen, any
half-precision non-quantized weights upcast to fp32).

Export (`merged`) never re-quantizes: each adapted layer becomes a plain nn.Linear holding
dequant(W_nf4) + s B A computed in fp32, and every other 4-bit (or 8-bit) layer is dequantized, so the exported model is an
ordinary fp32 Hugging Face model whose outputs equal the quantized+adapter model's up to float rounding.
(PEFT's own merge_and_unload on 4-bit layers re-quantizes the merged weight, which loses the update's detail.)
"""

from __future__ import annotations

from tuneforge.peft.lora.apply import Lora
from tuneforge.peft.qlora.spec import QLoraSpec
from tuneforge.registry import register


def checkpointing(model) -> bool:
    """Whether the runner enabled gradient checkpointing (transformers 5 renamed the flag)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name))


@register("peft", "qlora", config=QLoraSpec)
class QLora(Lora):
    def apply(self, model, ctx):
        from peft import prepare_model_for_kbit_training

        if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
            raise ValueError("peft=qlora needs a k-bit base: add quant=nf4 (or quant=int8)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing(model))
        return super().apply(model, ctx)

    def merged(self, model):
        import torch
        from peft.tuners.lora import LoraLayer
        from torch import nn

        from tuneforge.models.kbit import dense_weight, dequantize, replace_modules

        def make(m):
            if not isinstance(m, LoraLayer):
                return None
            base = m.get_base_layer()
            w = dense_weight(base).float()
            for name in m.active_adapters:
                if name in m.lora_A:
                    w = w + m.get_delta_weight(name).float()
            lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            lin.weight = nn.Parameter(w, requires_grad=False)
            if base.bias is not None:
                lin.bias = nn.Parameter(base.bias.detach().float().clone(), requires_grad=False)
            return lin

        with torch.no_grad():
            plain = model.get_base_model()
            replace_modules(plain, make)
            return dequantize(plain)
