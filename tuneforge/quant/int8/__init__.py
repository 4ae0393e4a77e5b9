"""`quant=int8`: the base model's linear layers stored in 8 bits with LLM.int8() (Dettmers et al., 2022,
arXiv 2208.07339), through bitsandbytes `Linear8bitLt` (`has_fp16_weights=False`: only the int8 weights and their
row scales are kept), with LoRA trained on top (`peft=qlora`, HF PEFT's LoRA layer for Linear8bitLt).

Sec. 3.1, vector-wise quantization: each row i of W (out x in) is stored as C_W[i] = round(127 W[i] / s_W[i]) with
s_W[i] = max_j |W[i, j]| (fp32 row scales, `SCB`), and the forward quantizes each row t of the input the same
way, C_X[t] = round(127 X[t] / s_X[t]), so that X W^T ~= (C_X C_W^T) * (s_X s_W^T) / 127^2 (Eq. 3, int32
accumulation). Sec. 3.2, mixed-precision decomposition: input feature columns holding any |x| >= threshold
(6.0 in the paper) are outliers; they are left out of the int8 product and multiplied in 16 bits against the
dequantized weight columns, X W^T ~= sum_{h in O} X_h W_h^T + (int8 product over the other columns) (Eq. 4).

Departures, all bitsandbytes' own (we use its layer unchanged):
- The weights are cast to fp16 before they are quantized (s_W and C_W are those of the fp16 weights).
- On CPU in training mode bitsandbytes (0.50) runs a weight-only path: y = x (C_W s_W / 127)^T in the input's
  dtype (no activation quantization, no decomposition; its `MatMul8bitFp`, "much faster on CPU"). Eval mode, and
  CUDA in both modes, run Eq. 3-4. The trained model's eval logits therefore differ from those of its
  dequantized export by LLM.int8's activation rounding (about 1/127 of a row's largest input), not more.
- The layer is a Linear8bitLt subclass (layer.py) whose codes and scales follow the weight on model.to(device):
  bitsandbytes moves them only when `.to` is called on the layer itself (NF4's Params4bit moves its state in
  place, Int8Params does not), and DeepSpeed moves the whole model.

Every nn.Linear inside the decoder layers (models.targets' `all-linear`: never the LM head or the embeddings) is
replaced by a frozen `Linear8bitLt` (layer.py: one whose int8 state follows device moves) after the model is
loaded, as quant=nf4 does; `models.kbit.dequantize` is
the inverse used by export (plain fp32 nn.Linear layers holding C_W s_W / 127).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob
from tuneforge.quant import Quantizer
from tuneforge.registry import register


@dataclass
class Int8Spec(Spec):
    name: str = knob("int8", "8-bit base weights with LLM.int8() outlier decomposition (bitsandbytes Linear8bitLt)")
    threshold: float = knob(6.0, "input features with any |x| >= this run in 16 bits instead of int8 (the paper's "
                                 "6.0; 0 turns the decomposition off)")

    caps = Caps(quantized_base="8-bit", trained_with="peft=qlora",
                whole_weights_at_build="it quantizes each weight matrix whole, layer by layer, after load")

    def problems(self):
        return [] if self.threshold >= 0 else [f"threshold={self.threshold} must be >= 0"]

    def weight_bytes(self, numel, rows):
        return numel + 4 * rows  # int8 codes C_W, one fp32 scale s_W per row


@register("quant", "int8", config=Int8Spec)
class Int8(Quantizer):
    def apply(self, model):
        import logging

        import bitsandbytes as bnb
        import torch
        from torch import nn

        from tuneforge.models.targets import ALL_LINEAR, replace, target_linears
        from tuneforge.quant.int8.layer import Int8Linear

        def make(m):
            q = Int8Linear(m.in_features, m.out_features, bias=m.bias is not None, has_fp16_weights=False,
                                    threshold=self.spec.threshold, device="meta")
            q.weight = bnb.nn.Int8Params(m.weight.data.float().cpu(), requires_grad=False, has_fp16_weights=False)
            if m.bias is not None:
                q.bias = nn.Parameter(m.bias.data.float().clone(), requires_grad=False)
            device = m.weight.device if m.weight.device.type != "meta" else torch.device("cpu")
            return q.to(device)  # bitsandbytes quantizes on this move (Int8Params.to)

        for name, m in target_linears(model, [ALL_LINEAR]):
            if type(m) is nn.Linear:
                replace(model, name, make(m))
        # bitsandbytes warns on every eval-mode call that it casts the inputs to fp16 for quantization: documented above
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        model.is_loaded_in_8bit = True  # what PEFT (LoRA's 8-bit layers, prepare_model_for_kbit_training) looks for
        return model
