"""Mixed-granularity FP8 activations (COAT section 5): what autograd keeps for backward is FP8.

- Linear layers (every plain nn.Linear but the LM head): the input is saved per tensor in E4M3 (one scale);
  backward dequantizes it for the weight gradient. One input read by several linears (q, k and v; gate and up)
  is quantized and saved once.
- Non-linear layers: RMSNorm's input and the MLP's SiLU(gate) * up inputs (gate, up) are saved per group of
  `group` (1 x 16) consecutive elements in E4M3; backward recomputes the rest from them (RMSNorm also keeps its
  per-row 1/rms in float32: one value per token).
- Backward: the gradient arriving at each of these layers travels in E5M2 (per tensor into linears, per group
  into non-linear layers), quantized and dequantized here (the reference's backward GEMMs read it in FP8).
Forward outputs are computed exactly as without COAT (in the autocast dtype): only what is saved changes.

`compress(model, group)` switches a model's layers to these functions in place (state dict unchanged).
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.precision.coat.quant import fake_fp8, fp8, unfp8

SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' modules computing F.silu
_last = {"x": None, "version": -1, "saved": None}  # the last linear input quantized (shared by q/k/v, gate/up)


def _per_tensor(x: torch.Tensor):
    """(q, scale) of x, reused when x is the tensor the previous linear quantized (unchanged since)."""
    ref = _last["x"]
    if ref is not None and ref() is x and _last["version"] == x._version:
        return _last["saved"]
    saved = fp8(x.detach(), "e4m3")
    _last.update(x=weakref.ref(x), version=x._version, saved=saved)
    return saved


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        out = F.linear(x, weight, bias)  # autocast (if on) casts inside, as for a plain linear
        q, scale = _per_tensor(x)
        ctx.save_for_backward(q, scale, weight)
        ctx.x_dtype, ctx.dtype, ctx.has_bias = x.dtype, out.dtype, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        q, scale, weight = ctx.saved_tensors
        g = fake_fp8(grad, "e5m2").to(ctx.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (g @ weight.to(ctx.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            x = unfp8(q, scale, ctx.dtype)
            gw = (g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(-1, g.shape[-1]).sum(0).float()
        return gx, gw, gb


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, group):
        ctx.save_for_backward(*fp8(gate.detach(), "e4m3", group), *fp8(up.detach(), "e4m3", group))
        ctx.group, ctx.dtypes = group, (gate.dtype, up.dtype)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        qg, sg, qu, su = ctx.saved_tensors
        g = fake_fp8(grad, "e5m2", ctx.group).float()
        gate, up = unfp8(qg, sg, torch.float32, ctx.group), unfp8(qu, su, torch.float32, ctx.group)
        sig = torch.sigmoid(gate)
        d_up = g * gate * sig
        d_gate = g * up * sig * (1 + gate * (1 - sig))
        return d_gate.to(ctx.dtypes[0]), d_up.to(ctx.dtypes[1]), None


class _RMSNorm(torch.autograd.Function):
    """y = w * (x / rms(x)) as Hugging Face's LlamaRMSNorm computes it (statistics in float32)."""

    @staticmethod
    def forward(ctx, x, weight, eps, group):
        xf = x.float()
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(*fp8(x.detach(), "e4m3", group), r, weight)
        ctx.group, ctx.x_dtype = group, x.dtype
        return weight * (xf * r).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, s, r, weight = ctx.saved_tensors
        g = fake_fp8(grad, "e5m2", ctx.group).float()
        n = unfp8(q, s, torch.float32, ctx.group) * r
        gw = (g * n).reshape(-1, n.shape[-1]).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gn = g * weight.float()
        gx = r * (gn - n * (gn * n).mean(-1, keepdim=True))
        return gx.to(ctx.x_dtype), gw, None, None


def _linear_forward(self, x):
    return _Linear.apply(x, self.weight, self.bias)


def _mlp_forward(self, x):
    return self.down_proj(_SiluMul.apply(self.gate_proj(x), self.up_proj(x), self.coat_group))


def _norm_forward(self, x):
    return _RMSNorm.apply(x, self.weight, self.variance_epsilon, self.coat_group)


def compress(model: nn.Module, group: int = 16) -> dict[str, int]:
    """Switch `model`'s plain linears (not the LM head), gated SiLU MLPs and RMSNorms to FP8-saving functions;
    returns how many of each."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    counts = {"linear": 0, "mlp": 0, "norm": 0}
    for module in model.modules():
        if type(module) is nn.Linear and module is not head:
            module.forward, kind = types.MethodType(_linear_forward, module), "linear"
        elif all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj")) \
                and type(getattr(module, "act_fn", None)).__name__ in SILU:
            module.forward, kind = types.MethodType(_mlp_forward, module), "mlp"
        elif type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward, kind = types.MethodType(_norm_forward, module), "norm"
        else:
            continue
        module.coat_group = group
        counts[kind] += 1
    return counts
