"""FP8 quantizers of COAT (pure torch; the CPU reference every CUDA path is tested against).

Dynamic range expansion (paper section 4.2; the reference kernel fp8_adamw_cuda_expand_kernel), per group G of
`group` consecutive elements of a flat tensor x:
    M = max|x|,  m0 = min |x| over the non-zero elements,  R = M / m0,  c = sqrt(M m0)
    k = floor(expand_min * log2(448^2 / 2) / log2 R) / expand_min          (so that k log2 R <= log2(448^2/2))
    y = sign(x) (|x| / c)^k,   s = (M / c)^k / 448,   q = E4M3(y / s)
    dequantized: x' = sign(q) (|q| s)^(1/k) c
Without expansion (k = 1, c = 1) this is plain per-group absmax E4M3: s = M / 448.
A group with a single magnitude (R = 1, any k fits) takes k = 1; an all-zero group stores q = 0, k = c = s = 1;
k is at most K_MAX = 64 (R < 1.2: the float32 power (|x|/c)^k with k in the thousands rounds to inf).

Activations: `fp8(x, fmt, group)` quantizes per tensor (group=0) or per `group` consecutive elements, absmax
scaling to the format's largest value (E4M3 448, E5M2 57344); `unfp8` undoes it.
"""

from __future__ import annotations

import math

import torch

FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}
E4M3, E4M3_MAX = FORMATS["e4m3"]
LOG2_BOUND = math.log2(E4M3_MAX**2 / 2)  # the largest log2 R an expanded group may span
K_MAX = 64.0  # beyond it float32's (|x|/c)^k loses more than float8 keeps (and overflows as R -> 1)


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    """x flattened to float32 and zero-padded into rows of `group` elements."""
    flat = x.reshape(-1).float()
    pad = -flat.numel() % group
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, group)


def expand_quantize(x: torch.Tensor, group: int = 128, expand_min: int = 16, expansion: bool = True):
    """(q E4M3 in x's shape, s, k, c: one float32 per group)."""
    g = _grouped(x, group)
    a = g.abs()
    big = a.amax(1)
    empty = big == 0
    one = torch.ones_like(big)
    if expansion:
        small = torch.where(a > 0, a, torch.inf).amin(1)
        log_r = torch.log2(big) - torch.log2(small)  # no overflow of M / m0 for subnormal m0
        k = torch.floor(expand_min * LOG2_BOUND / log_r) / expand_min
        k = torch.where(log_r > 0, k.clamp(min=1.0 / expand_min, max=K_MAX), one)
        c = torch.where(empty, one, torch.sqrt(big) * torch.sqrt(small))  # M m0 may underflow (the kernel's order)
        k = torch.where(empty, one, k)
    else:
        k, c = one, one
    s = torch.where(empty, one, (big / c) ** k / E4M3_MAX)
    y = torch.sign(g) * (a / c[:, None]) ** k[:, None]
    q = (y / s[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q.reshape(-1)[: x.numel()].view(x.shape), s, k, c


def expand_dequantize(q: torch.Tensor, s: torch.Tensor, k: torch.Tensor, c: torch.Tensor, group: int = 128):
    """float32 tensor in q's shape: sign(q) (|q| s)^(1/k) c per group."""
    g = _grouped(q, group)
    x = torch.sign(g) * (g.abs() * s[:, None]) ** (1.0 / k[:, None]) * c[:, None]
    return x.reshape(-1)[: q.numel()].view(q.shape)


def fp8(x: torch.Tensor, fmt: str = "e4m3", group: int = 0):
    """(q, scale): x / scale in FP8, absmax-scaled per tensor (group=0) or per `group` consecutive elements."""
    dtype, top = FORMATS[fmt]
    g = x.reshape(1, -1).float() if group == 0 else _grouped(x, group)
    scale = (g.abs().amax(1, keepdim=True) / top).clamp(min=torch.finfo(torch.float32).tiny)
    q = (g / scale).clamp(-top, top).to(dtype)
    return q.reshape(-1)[: x.numel()].view(x.shape), scale.reshape(-1)


def unfp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, group: int = 0) -> torch.Tensor:
    g = q.reshape(1, -1).float() if group == 0 else _grouped(q, group)
    return (g * scale[:, None]).reshape(-1)[: q.numel()].view(q.shape).to(dtype)


def fake_fp8(x: torch.Tensor, fmt: str, group: int = 0) -> torch.Tensor:
    """x through FP8 and back (in x's dtype): how a gradient that travels in FP8 arrives."""
    return unfp8(*fp8(x, fmt, group), x.dtype, group)
