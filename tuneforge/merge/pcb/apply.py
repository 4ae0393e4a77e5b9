from __future__ import annotations

import math

import torch

from tuneforge.merge.base import Merger
from tuneforge.merge.pcb.spec import PcbSpec
from tuneforge.registry import register


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row to [0, 1] (a constant row: 0)."""
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=torch.finfo(x.dtype).tiny)


def clamp_tails(a: torch.Tensor, frac: float) -> torch.Tensor:
    """Clamp each row to its values floor(frac x d) entries in from either end."""
    d = a.shape[1]
    k = math.floor(frac * d)
    if k == 0:
        return a
    s = a.sort(dim=1).values
    return torch.minimum(torch.maximum(a, s[:, k:k + 1]), s[:, d - 1 - k:d - k])


@register("merge", "pcb", config=PcbSpec)
class Pcb(Merger):
    def combine(self, taus):
        n, shape = taus.shape[0], taus.shape[1:]
        tau = taus.reshape(n, -1).float()
        mag = clamp_tails(tau.abs(), self.spec.clamp)
        clamped = tau.sign() * mag
        intra = torch.exp(n * minmax(mag) ** 2)
        inter = torch.tanh(tau * tau.sum(dim=0, keepdim=True))
        beta = (intra * inter).clamp(min=0)
        k = max(1, round(self.spec.ratio * tau.shape[1]))
        keep = torch.zeros_like(beta, dtype=torch.bool).scatter_(1, beta.topk(k, dim=1).indices, True)
        beta = beta * keep
        total = beta.sum(dim=0)
        merged = (beta * clamped).sum(dim=0) / torch.where(total > 0, total, 1.0)
        return merged.reshape(shape)
