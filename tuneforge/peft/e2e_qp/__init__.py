"""`peft=e2e_qp`: End-to-End training of Quantization Parameters, EfficientQAT's second phase (Chen et al., 2024,
arXiv 2407.11062, Sec. 3.3; main_e2e_qp.py of OpenGVLab/EfficientQAT), on the base quant=efficientqat made.

With W^ = (Wq - z) s, the integers Wq and zero points z stay frozen and only the step sizes s (one per group:
the `scales` of every models.groupwise.GroupQuantLinear) train, end to end on the run's data and objective;
every other parameter (embeddings, norms, LM head) is frozen, as in the reference (which freezes the model and
leaves only its QuantLinear `scales` trainable). The reference trains the scales in fp32 under bf16 autocast
(its --bf16; the recipes' precision) with lr 1e-5 (2e-5 at 2 bits), a cosine schedule, max_grad_norm 0.3.

`merged(model)` is the fake-quantized model as a plain Hugging Face model (each layer's W^ in an nn.Linear): the
`merge` export stage writes it. The packed integer checkpoint is the `gptq` export stage's (export=[gptq]).
"""

from __future__ import annotations

from tuneforge.errors import RunError
from tuneforge.models.groupwise import dequantize, layers
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.e2e_qp.spec import E2EQPSpec
from tuneforge.registry import register


@register("peft", "e2e_qp", config=E2EQPSpec)
class E2EQP(TuningMethod):
    def apply(self, model, ctx):
        found = layers(model)
        if not found:
            raise RunError("peft=e2e_qp found no quantized layer: it trains the step sizes of a quant=efficientqat base")
        model.requires_grad_(False)
        for _, m in found:
            m.scales.requires_grad_(True)
        return model

    def merged(self, model):
        return dequantize(model)
