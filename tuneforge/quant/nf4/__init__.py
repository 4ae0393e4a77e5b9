"""`quant=nf4`: the base model's linear layers stored in 4-bit NormalFloat (QLoRA, Dettmers et al., 2023,
arXiv 2305.14314), through bitsandbytes `Linear4bit` (forward and backward work on CPU and GPU).

Sec. 3 of the paper: W is quantized block-wise (64 weights per block) to NF4, the 4-bit data type whose 16 levels
are the quantiles of N(0, 1) (Eq. 4); with double quantization the per-block fp32 absmax constants are quantized
again to 8 bits (blocks of 256). The forward computes Y = X doubleDequant(c1, c2, W_nf4) in the compute dtype
(Eq. 5's base term), the dtype of the `precision` group (fp32 or bf16).

Every nn.Linear inside the decoder layers (models.targets' `all-linear`: never the LM head or the embeddings;
exactly the linears `peft=qlora` adapts by default) is replaced by a frozen `Linear4bit` after the model is
loaded. This one path works for models built from a config (random init: `model=tiny_llama`) and for pretrained
checkpoints alike (the weights load in fp32 first, then are quantized layer by layer). `dequantize(model)` is the
inverse used by export (tuneforge/models/kbit.py): plain nn.Linear layers holding the dequantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, one_of
from tuneforge.quant import Quantizer
from tuneforge.registry import register


@dataclass
class Nf4Spec(Spec):
    name: str = knob("nf4", "4-bit NormalFloat base weights (bitsandbytes Linear4bit; QLoRA)")
    double_quant: bool = knob(True, "quantize the per-block scales again (saves ~0.37 bit per weight)")
    blocksize: int = knob(64, "weights per quantization block (64 in the paper)")

    caps = Caps(quantized_base="4-bit", trained_with="peft=qlora",
                whole_weights_at_build="it quantizes each weight matrix whole, layer by layer, after load")

    def problems(self):
        return one_of(self, "blocksize", (32, 64, 128, 256, 512, 1024, 2048, 4096))

    def weight_bytes(self, numel, rows):
        """4-bit codes; one absmax per block: fp32, or with double quantization 8-bit plus one fp32 per 256 blocks."""
        blocks = numel / self.blocksize
        return numel / 2 + (blocks + 4 * blocks / 256 if self.double_quant else 4 * blocks)


@register("quant", "nf4", config=Nf4Spec)
class Nf4(Quantizer):
    def apply(self, model):
        import bitsandbytes as bnb
        import torch
        from torch import nn

        from tuneforge.models.load import torch_dtype
        from tuneforge.models.targets import ALL_LINEAR, replace, target_linears

        s, dtype = self.spec, torch_dtype(self.compute_dtype)

        def make(m):
            q = bnb.nn.Linear4bit(m.in_features, m.out_features, bias=m.bias is not None, compute_dtype=dtype,
                                  compress_statistics=s.double_quant, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(m.weight.data.float(), requires_grad=False, blocksize=s.blocksize,
                                         compress_statistics=s.double_quant, quant_type="nf4", module=q)
            if m.bias is not None:
                q.bias = nn.Parameter(m.bias.data.clone(), requires_grad=False)
            q.support_avx512bf16_for_cpu = False  # never repack the weights in place at eval: one canonical layout
            return q.to(m.weight.device if m.weight.device.type != "meta" else torch.device("cpu"))

        for name, m in target_linears(model, [ALL_LINEAR]):
            if type(m) is nn.Linear:
                replace(model, name, make(m))
        model.is_loaded_in_4bit = True  # what PEFT (LoRA's 4-bit layers, prepare_model_for_kbit_training) looks for
        return model
