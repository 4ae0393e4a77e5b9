"""A TriAdaptLoRA linear: h = W0 x + s B A x, with A (r_max x in), B (out x r_max) allocated at the largest rank and
a rank mask: rows of A / columns of B beyond the current rank get no gradient (they are detached), and those
columns of B stay exactly zero, so the layer's value never depends on the mask (an export rebuilt without the
method state reproduces the run)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear


class TriAdaptLinear(AdapterLinear):
    def __init__(self, base: nn.Linear, r_init: int, r_max: int, alpha: float, gen: torch.Generator):
        super().__init__(base)
        n_out, n_in = base.weight.shape
        self.scaling = alpha / r_init
        bound = 1 / math.sqrt(n_in)  # what nn.init.kaiming_uniform_(a=sqrt(5)) gives, as LoRA's A
        self.lora_A = nn.Parameter((torch.rand(r_max, n_in, generator=gen) * 2 - 1) * bound)
        self.lora_B = nn.Parameter(torch.zeros(n_out, r_max))
        self.register_buffer("mask", torch.arange(r_max) < r_init, persistent=False)

    @property
    def rank(self) -> int:
        return int(self.mask.sum().item())

    def set_rank(self, r: int) -> None:
        self.mask.copy_(torch.arange(self.mask.numel()) < r)

    def masked(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.lora_A, self.lora_B
        return torch.where(self.mask[:, None], a, a.detach()), torch.where(self.mask[None, :], b, b.detach())

    def extra(self, x):
        a, b = self.masked()
        return F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype)) * self.scaling

    def delta(self):
        a, b = self.masked()
        return self.scaling * b @ a

    @torch.no_grad()
    def importance(self) -> float:
        """Normalized Frobenius norm of the update, ||s B A||_F / sqrt(out * in) (via the r x r Gram matrices)."""
        a, b = self.lora_A.float() * self.mask[:, None], self.lora_B.float()
        sq = torch.trace((b.T @ b) @ (a @ a.T)).clamp(min=0).item()
        return self.scaling * math.sqrt(sq / b.shape[0] / a.shape[1])
