"""A TriAdaptLoRA linear: h = W0 x + s B C A x, C = tril(L) + triu(U, 1) the triangular core. A (r_max x in),
B (out x r_max), L and U (r_max x r_max) are allocated at the largest rank; a rank mask detaches everything
beyond the current rank (no gradient). Beyond the rank, B's columns, L's rows and U's columns stay exactly zero,
so the layer's value never depends on the mask (an export rebuilt without the method state reproduces the run)."""

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
        self.lora_L = nn.Parameter(torch.diag((torch.arange(r_max) < r_init).float()))  # lower triangle (+ diag)
        self.lora_U = nn.Parameter(torch.zeros(r_max, r_max))  # strict upper triangle
        self.register_buffer("mask", torch.arange(r_max) < r_init, persistent=False)
        self.blocks = 1  # growth events + 1: the normaliser of the importance norm
        self.norm = self.core_norm()  # normalized ||C||_F at the last decision (the first one: at init)

    @property
    def rank(self) -> int:
        return int(self.mask.sum().item())

    def set_rank(self, r: int) -> None:
        self.mask.copy_(torch.arange(self.mask.numel()) < r)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.mask
        c = torch.tril(self.lora_L) + torch.triu(self.lora_U, 1)
        keep = m[:, None] & m[None, :]
        return (torch.where(m[:, None], self.lora_A, self.lora_A.detach()), torch.where(keep, c, c.detach()),
                torch.where(m[None, :], self.lora_B, self.lora_B.detach()))

    def extra(self, x):
        a, c, b = (t.to(x.dtype) for t in self.parts())
        return F.linear(F.linear(F.linear(x, a), c), b) * self.scaling

    def delta(self):
        a, c, b = self.parts()
        return self.scaling * b @ c @ a

    @torch.no_grad()
    def core_norm(self) -> float:
        """||C||_F over the active rank, divided by the number of blocks (the paper's normalized norm)."""
        r = self.rank
        c = torch.tril(self.lora_L) + torch.triu(self.lora_U, 1)
        return c[:r, :r].float().norm().item() / self.blocks
