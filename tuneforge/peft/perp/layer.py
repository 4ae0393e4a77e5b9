"""PERP's layers: the two sparsity-preserving reparametrisations of a pruned linear, and the plain LoRA of the head.

    MaskLora   h = (W + s (B A ⊙ M)) x + b,   M = 1[W != 0] (fixed at build),  s = alpha / r,  B = 0 at start
    ScaleLora  h = (W ⊙ (B A)) x + b,          A = 1/sqrt(r) (r x in), B = 1/sqrt(r) (out x r): B A = 1 at start
    HeadLora   h = (W + s B A) x              (the unpruned LM head; B = 0 at start)

`merged_weight()` is the weight each computes with; entries where W = 0 stay exactly 0 in both sparse forms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear


class _LowRank(AdapterLinear):
    def __init__(self, base: nn.Linear, r: int, gen: torch.Generator):
        super().__init__(base)
        n_out, n_in = base.weight.shape
        # LoRA's start (PEFT's kaiming-uniform bound for A, B = 0); ScaleLora overwrites both
        self.lora_A = nn.Parameter((torch.rand(r, n_in, generator=gen) * 2 - 1) / math.sqrt(n_in))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))

    def ba(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A


class MaskLora(_LowRank):
    def __init__(self, base, r, alpha, gen):
        super().__init__(base, r, gen)
        self.scaling = alpha / r
        self.register_buffer("mask", base.weight.detach() != 0, persistent=False)

    def delta(self):
        return self.scaling * self.ba() * self.mask

    def extra(self, x):
        return F.linear(x, self.delta().to(x.dtype))


class ScaleLora(_LowRank):
    def __init__(self, base, r, gen):
        super().__init__(base, r, gen)
        with torch.no_grad():
            self.lora_A.fill_(1 / math.sqrt(r))
            self.lora_B.fill_(1 / math.sqrt(r))

    def merged_weight(self):
        return self.base.weight.float() * self.ba()

    def delta(self):
        return self.merged_weight() - self.base.weight.float()

    def forward(self, x):
        return F.linear(x, self.merged_weight().to(x.dtype), self.base.bias)


class HeadLora(_LowRank):
    def __init__(self, base, r, alpha, gen):
        super().__init__(base, r, gen)
        self.scaling = alpha / r

    def delta(self):
        return self.scaling * self.ba()

    def extra(self, x):
        return F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
