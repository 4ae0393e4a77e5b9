"""The CPU reference of FP8 linear training: a pure-torch emulation of torchao's float8 linear, on torch's float8
dtypes, for any device (the CUDA path, torchao's kernels, is tested against it).

One linear y = x W^T + b runs three matmuls, each on FP8 operands q = sat(t * s) cast to the FP8 dtype, with a
dynamic scale s = fmax / amax(|t|) (fmax: the dtype's largest finite value, 448 for E4M3, 57344 for E5M2; amax
over the whole tensor, or per row of the reduction axis for `rowwise`), and accumulates in fp32 before it undoes
the scales (as torch._scaled_mm does):

    forward        y   = (q(x) q(W)^T) / (s_x s_W)        x, W in E4M3
    backward       dx  = (q(dy) q(W)) / (s_dy s_W)          dy in E5M2 (tensorwise) or E4M3 (rowwise)
                   dW  = (q(dy)^T q(x)) / (s_dy s_x)

`tensorwise` (torchao's default recipe): one scale per tensor, E5M2 gradients. `rowwise`: one scale per row along
each matmul's reduction axis (so x, W and dy are re-quantized along another axis for the backward matmuls), all in
E4M3, scales rounded down to a power of two. Like torchao, the layer saves x and W in high precision for the
backward and re-quantizes there; the weights stay high-precision parameters (master weights), cast on the fly.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
EPS = 1e-12  # torchao's floor on amax (an all-zero tensor gets a finite scale)


def quantize(t: torch.Tensor, dtype: torch.dtype, dim: int | None = None, pow2: bool = False):
    """(FP8 tensor, fp32 scale): q = sat(t * s), s = fmax / amax(|t|) over the tensor (dim=None) or along `dim`."""
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    fmax = torch.finfo(dtype).max
    scale = (fmax / amax.double().clamp(min=EPS)).float()
    if pow2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return (t.float() * scale).clamp(-fmax, fmax).to(dtype), scale


def scaled_mm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """(a @ b) / (sa * sb) of FP8 operands, accumulated in fp32 (sa: scalar or a column, sb: scalar or a row)."""
    with torch.autocast(a.device.type, enabled=False):
        return (a.float() @ b.float()) / (sa * sb)


class Fp8Matmul(torch.autograd.Function):
    """x (M, K) @ W^T (W: N x K) with FP8 operands in all three matmuls; returns fp32 (M, N)."""

    @staticmethod
    def forward(ctx, x, weight, rowwise: bool):
        ctx.save_for_backward(x, weight)
        ctx.rowwise = rowwise
        axis = -1 if rowwise else None  # x and W both reduce over K, their last axis
        qx, sx = quantize(x, E4M3, axis, rowwise)
        qw, sw = quantize(weight, E4M3, axis, rowwise)
        return scaled_mm(qx, sx, qw.t(), sw.t() if rowwise else sw)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rowwise = ctx.rowwise
        gdtype = E4M3 if rowwise else E5M2
        dx = dw = None
        if ctx.needs_input_grad[0]:  # dx = dy @ W reduces over N: dy along its rows, W along its columns
            qg, sg = quantize(grad, gdtype, -1 if rowwise else None, rowwise)
            qw, sw = quantize(weight, E4M3, 0 if rowwise else None, rowwise)
            dx = scaled_mm(qg, sg, qw, sw).to(x.dtype)
        if ctx.needs_input_grad[1]:  # dW = dy^T @ x reduces over M (tokens): both along their columns
            qg, sg = quantize(grad, gdtype, 0 if rowwise else None, rowwise)
            qx, sx = quantize(x, E4M3, 0 if rowwise else None, rowwise)
            dw = scaled_mm(qg.t(), sg.t() if rowwise else sg, qx, sx).to(weight.dtype)
        return dx, dw, None


class Fp8Linear(nn.Linear):
    """nn.Linear whose matmuls run in emulated FP8 (`Fp8Matmul`). `to_fp8(linear, recipe)` converts in place: the
    module keeps its Parameter objects, hooks and the references a tuning method (PEFT's base_layer) holds."""

    recipe = "tensorwise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype  # as F.linear does
        x = x.to(dtype)
        y = Fp8Matmul.apply(x.reshape(-1, x.shape[-1]), self.weight, self.recipe == "rowwise")
        y = y.reshape(*x.shape[:-1], self.out_features).to(dtype)
        return y if self.bias is None else y + self.bias.to(dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.recipe} (emulated)"


def to_fp8(linear: nn.Linear, recipe: str) -> Fp8Linear:
    linear.__class__ = Fp8Linear
    linear.recipe = recipe
    return linear
