"""The L4Q linear: LoRA merged into the frozen weight, the sum quantized by a learned-step (LSQ+) quantizer,
with a backward written by hand that never keeps the merged weight (apply.py's docstring cites the equations).

    init_quantizer(w, bits, group)    L4Q_init: per group s = max(|min W| / |Q_n|, |max W| / Q_p), b = 0
    quantize(w, a, b, s, off, ...)    the integer codes Q = round(clamp((W0 + k B A - off) / s, Q_n, Q_p))
    L4QFunction                       y = x Wq^T, Wq = Q s + off; backward recomputes W' from W0, A, B
    L4QLinear                         the training module (base.weight frozen; lora_A, lora_B, q_scale, q_offset)
    IntLinear                         the exported module: int8 codes + scales + offsets, nothing else trained
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid(bits: int) -> tuple[int, int]:
    """(Q_n, Q_p): the signed N-bit integer range."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def groups(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) -> (out, in / group, group): consecutive input features share a scale (group 0: the whole row)."""
    return w.reshape(w.shape[0], -1, group or w.shape[1])


@torch.no_grad()
def init_quantizer(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L4Q_init (symmetric): per group s = max(|min W / Q_n|, |max W / Q_p|) (so neither outlier is clipped),
    offset b = 0. fp32, shape (out, in / group)."""
    qn, qp = grid(bits)
    g = groups(w.detach().float(), group)
    s = torch.maximum((g.amin(-1) / qn).abs(), (g.amax(-1) / qp).abs()).clamp(min=1e-8)
    return s, torch.zeros_like(s)


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or float64 if it is (the float64 gradient check)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def merged(w0, a, b, scaling):
    """W' = W0 + (alpha / r) B A, fp32."""
    return wide(w0) + scaling * (wide(b) @ wide(a))


def scaled(w0, a, b, s, off, scaling, group):
    """v = (W' - off) / s per group: shape (out, in / group, group)."""
    return (groups(merged(w0, a, b, scaling), group) - wide(off)[..., None]) / wide(s)[..., None]


def quantize(w0, a, b, s, off, scaling, bits, group, rounding=True) -> torch.Tensor:
    """The integer codes round(clamp(v, Q_n, Q_p)) (float, shaped like W0). rounding=False skips the rounding
    (only the float64 gradient check uses it: it makes the straight-through gradients exact derivatives)."""
    qn, qp = grid(bits)
    v = scaled(w0, a, b, s, off, scaling, group).clamp(qn, qp)
    return (v.round() if rounding else v).reshape(w0.shape)


def dequantize(codes: torch.Tensor, s: torch.Tensor, off: torch.Tensor, group: int) -> torch.Tensor:
    """Wq = Q s + off (fp32): one expression for training, export and the exported model, so they agree bitwise."""
    g = groups(codes.to(wide(s).dtype), group)
    return (g * wide(s)[..., None] + wide(off)[..., None]).reshape(codes.shape)


class L4QFunction(torch.autograd.Function):
    """y = x Wq^T with Wq = round(clamp((W' - b) / s, Q_n, Q_p)) s + b and W' = W0 + k B A (k = alpha / r).

    Saved for backward: x and the parameters W0, A, B, s, b (references, no copies); neither W' nor Wq is kept.
    The backward recomputes them and takes G = dL/dWq = dy^T x locally (it is freed on return):
        dx = dy Wq
        dA = k B^T (G * 1_in),  dB = k (G * 1_in) A^T                (straight-through: dWq/dW' = 1_in)
        ds = g * sum_group G * (round(v) - v  inside,  Q_n or Q_p outside)    (LSQ+; v = (W' - b) / s)
        db = g * sum_group G * (0 inside,  1 outside)
    1_in = [Q_n <= v <= Q_p]; g = LSQ's gradient scale 1 / sqrt(group * Q_p). W0 gets no gradient.
    The matmuls run in `dtype` (the autocast dtype or x's); the quantizer and every gradient but dx in fp32
    (float64 inputs stay float64)."""

    @staticmethod
    def forward(ctx, x, w0, a, b, s, off, scaling, bits, group, grad_scale, dtype, rounding=True):
        ctx.save_for_backward(x, w0, a, b, s, off)
        ctx.args = scaling, bits, group, grad_scale, dtype, rounding
        wq = dequantize(quantize(w0, a, b, s, off, scaling, bits, group, rounding), s, off, group)
        return F.linear(x.to(dtype), wq.to(dtype))

    @staticmethod
    def backward(ctx, dy):
        x, w0, a, b, s, off = ctx.saved_tensors
        scaling, bits, group, grad_scale, dtype, rounding = ctx.args
        qn, qp = grid(bits)
        v = scaled(w0, a, b, s, off, scaling, group)
        inside = (v >= qn) & (v <= qp)
        vc = v.clamp(qn, qp)
        q = vc.round() if rounding else vc
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dy.to(dtype) @ dequantize(q.reshape(w0.shape), s, off, group).to(dtype)).to(x.dtype)
        n_out, n_in = w0.shape
        g = wide(dy.reshape(-1, n_out).to(dtype).T @ x.reshape(-1, n_in).to(dtype))  # dL/dWq, (out, in)
        gg = groups(g, group)
        gw = (gg * inside).reshape(w0.shape)  # dL/dW' (straight-through inside the clamp range)
        da = (scaling * (wide(b).T @ gw)).to(a.dtype)
        db = (scaling * (gw @ wide(a).T)).to(b.dtype)
        ds = (grad_scale * (gg * torch.where(inside, q - v, vc)).sum(-1)).to(s.dtype)
        doff = (grad_scale * (gg * ~inside).sum(-1)).to(off.dtype)
        return dx, None, da, db, ds, doff, None, None, None, None, None, None


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class L4QLinear(nn.Module):
    """A target linear under L4Q: the frozen base (`.base`, its weight W0 and bias) plus the trained LoRA factors
    and per-group quantizer parameters. forward(x) = x Wq^T + bias."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, bits: int, group: int, gen: torch.Generator):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        n_out, n_in = base.weight.shape
        self.scaling, self.bits, self.group = alpha / r, bits, group
        self.grad_scale = 1.0 / math.sqrt((group or n_in) * grid(bits)[1])
        dev = base.weight.device
        self.lora_A = nn.Parameter(((torch.rand(r, n_in, generator=gen) * 2 - 1) / math.sqrt(n_in)).to(dev))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r, device=dev))
        s, off = init_quantizer(base.weight, bits, group)
        self.q_scale, self.q_offset = nn.Parameter(s), nn.Parameter(off)

    def forward(self, x):
        y = L4QFunction.apply(x, self.base.weight, self.lora_A, self.lora_B, self.q_scale, self.q_offset,
                              self.scaling, self.bits, self.group, self.grad_scale, autocast_dtype(x))
        return y if self.base.bias is None else y + self.base.bias.to(y.dtype)

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """The integer weights, int8, shaped like W0."""
        return quantize(self.base.weight, self.lora_A, self.lora_B, self.q_scale, self.q_offset, self.scaling,
                        self.bits, self.group).to(torch.int8)

    @torch.no_grad()
    def weight_q(self) -> torch.Tensor:
        """Wq (fp32): the weight the forward multiplies by."""
        return dequantize(self.codes(), self.q_scale, self.q_offset, self.group)


class IntLinear(nn.Module):
    """The exported layer: int8 codes, fp32 per-group scales and offsets (buffers; no parameters but the bias).
    forward(x) = x (Q s + off)^T + bias, computed exactly as in training."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.group = group
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scales", scales.float())
        self.register_buffer("offsets", offsets.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_features, self.in_features = codes.shape

    def forward(self, x):
        dtype = autocast_dtype(x)
        y = F.linear(x.to(dtype), dequantize(self.codes, self.scales, self.offsets, self.group).to(dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)
