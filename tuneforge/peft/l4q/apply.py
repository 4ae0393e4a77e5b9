"""`peft=l4q`: L4Q, parameter-efficient quantization-aware fine-tuning (Jeon, Kim & Kim, ACL 2025,
arXiv 2402.04902). HF PEFT does not have it and the authors released no code; this is tuneforge's own, written from
the paper's Section 3 (layer design, memory-efficient backward, quantization-parameter initialization). Sources
checked (offline): the abstract and two published summaries of Section 3 that reproduce its equations (the
paper's own text was not readable here, so its equation numbers are not cited), and LSQ / LSQ+ for the quantizer's
gradients, which L4Q adopts.

The layer (Sec. 3, "fully-quantized linear layer"): LoRA is merged into the pretrained weight *before* the
quantizer, so the trained model is one integer matrix per linear, with no adapter beside it:
    W' = W0 + k B A                              k = alpha / r (the paper's alpha); A (r x in) random, B = 0
    Q  = round(clamp((W' - b) / s, Q_n, Q_p))    integer codes, Q_n = -2^(N-1), Q_p = 2^(N-1) - 1
    Wq = Q s + b,   y = x Wq^T                   s (step) and b (offset): one pair per group of `group_size`
                                                 consecutive input features (the paper: 128)
Gradients (LSQ+, Bhalgat et al. 2020, the form L4Q uses, with rounding straight-through), v = (W' - b) / s:
    dWq/ds = round(v) - v   if Q_n <= v <= Q_p,   Q_n (below),  Q_p (above)
    dWq/db = 0              if Q_n <= v <= Q_p,   1 otherwise
    dL/dA  = k B^T (dL/dWq * 1_in),   dL/dB = k (dL/dWq * 1_in) A^T      (dWq/dW' = 1_in straight-through)
A, B, s and b train together: the quantizer sees every LoRA update and the LoRA gradient passes the quantizer's
clipping mask, which is the paper's "joint quantization and fine-tuning".
Memory (Sec. 3, "memory-efficient QAT"): the backward (layer.L4QFunction) keeps only x and references to
W0, A, B, s, b; it recomputes W' and Wq, forms dL/dWq = dy^T x locally, derives every gradient from it and frees
it: no W' or weight-gradient tensor outlives a layer's backward, and W0 (frozen) gets no gradient.
Initialization (Sec. 3, L4Q_init): per group s = max(|min(W0) / Q_n|, |max(W0) / Q_p|), b = 0, a symmetric grid
that covers both outliers, so no weight is clipped at the start (LSQ+'s mean/std init clips LLM outliers).

Export (`tuneforge export`): only integers remain. `export/l4q/l4q.safetensors` holds, per target linear,
`<name>.codes` (int8 Q), `<name>.scales` and `<name>.offsets` (fp32, shape out x in/group_size), and
`export/l4q/l4q.json` the grid (bits, Q_n, Q_p, group size, Wq = Q s + b). `L4q.load_export` puts them into the
run's base model as `layer.IntLinear` modules (every other tensor of the base is untouched by training). Not the
GPTQ format: GPTQ stores an integer zero point, Wq = (Q_u - z) s, and L4Q's learned offset b is a real number
(z = -Q_n - b / s is not an integer), so packing it there would move the weights off the trained grid.

Departures from the paper, and why:
  - LSQ's gradient scale g = 1 / sqrt(group_size * Q_p) multiplies ds and db (Esser et al. 2020, Sec. 2.2,
    the scale LSQ+ keeps): per-group steps see only group_size weights' gradient each; the paper does not state
    its own scale.
  - The quantizer and all gradients but dx run in fp32 whatever the precision mode (bf16 autocast runs only the
    two matmuls in bf16): the codes must not depend on bf16 rounding of W'.
  - The paper's experiments quantize every linear of the decoder layers (q/k/v/o, gate/up/down); so does
    `target_modules=[all-linear]`. Embeddings and the LM head stay in full precision, as there.
  - No warm-up phase: a summary of the first arXiv version describes a warm-up with Q(W0) + k B A before
    quantizing the merged weight; the published (ACL) version's layer quantizes the merged weight from the start.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tuneforge.models.shapes import divides_features, targets
from tuneforge.models.targets import replace, target_linears
from tuneforge.peft.adapters import wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.l4q.layer import IntLinear, L4QLinear, grid
from tuneforge.peft.l4q.spec import L4qSpec
from tuneforge.registry import register

EXPORT_DIR = "l4q"


def l4q_layers(model: nn.Module) -> dict[str, L4QLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, L4QLinear)}


@register("peft", "l4q", config=L4qSpec)
class L4q(TuningMethod):
    hf_export = False  # the export is integer codes + scales + offsets (export/l4q/), loaded by load_export

    @staticmethod
    def shape_problems(spec, shape):
        linears, out = targets(shape, spec.target_modules)
        return out + (divides_features("peft.group_size", spec.group_size, linears, sides=("in",))
                      if spec.group_size else [])

    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)

        def make(i, name, linear):
            return L4QLinear(linear, s.r, s.alpha, s.bits, s.group_size, torch.Generator().manual_seed(ctx.seed * 7919 + i))

        wrap(model, s.target_modules, make)
        return model

    @torch.no_grad()
    def merged(self, model):
        """A plain Hugging Face model whose target weights are Wq (exactly on the grid in fp32)."""
        for name, layer in l4q_layers(model).items():
            base = layer.base
            base.weight.copy_(layer.weight_q().to(base.weight.dtype))
            replace(model, name, base)
        return model

    @torch.no_grad()
    def export(self, model, out: Path) -> None:
        from safetensors.torch import save_file

        path = Path(out) / EXPORT_DIR
        path.mkdir(parents=True, exist_ok=True)
        tensors, layers = {}, l4q_layers(model)
        for name, layer in layers.items():
            tensors[f"{name}.codes"] = layer.codes().cpu().contiguous()
            tensors[f"{name}.scales"] = layer.q_scale.detach().float().cpu().contiguous()
            tensors[f"{name}.offsets"] = layer.q_offset.detach().float().cpu().contiguous()
        save_file(tensors, str(path / "l4q.safetensors"))
        s, (qn, qp) = self.spec, grid(self.spec.bits)
        (path / "l4q.json").write_text(json.dumps({
            "peft": "l4q", "arxiv": "2402.04902", "bits": s.bits, "q_min": qn, "q_max": qp,
            "group_size": s.group_size, "targets": list(layers),
            "weight": "W[o, i] = codes[o, i] * scales[o, i // group_size] + offsets[o, i // group_size] "
                      "(group_size 0: one scale and offset per row); every other tensor is the base model's"}, indent=2))

    @staticmethod
    def load_export(base: nn.Module, out: Path) -> nn.Module:
        """The exported integer model: `base` (the run's base model, loaded plainly) with each target linear
        replaced by an IntLinear holding the exported codes, scales and offsets (the base bias kept)."""
        from safetensors.torch import load_file

        path = Path(out) / EXPORT_DIR
        meta = json.loads((path / "l4q.json").read_text())
        state = load_file(str(path / "l4q.safetensors"))
        linears = dict(target_linears(base, meta["targets"]))
        for name in meta["targets"]:
            lin = linears[name]
            replace(base, name, IntLinear(state[f"{name}.codes"], state[f"{name}.scales"], state[f"{name}.offsets"],
                                          meta["group_size"], lin.bias).to(lin.weight.device))
        return base
