"""A PST linear: W' = M ⊙ (W + beta U V), M = TopK(S) with a straight-through gradient (see apply.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear


class TopK(torch.autograd.Function):
    """Forward: 1 at the k largest scores of the matrix (ties: the lower flat index first), 0 elsewhere.
    Backward: the straight-through estimator, dL/dS = dL/dM (the reference's SparseBinarizer)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.zeros_like(scores)
        order = torch.sort(scores.detach().flatten(), descending=True, stable=True).indices
        mask.view(-1)[order[:k]] = 1
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class PstLinear(AdapterLinear):
    def __init__(self, base: nn.Linear, spec, gen: torch.Generator):
        super().__init__(base)
        n_out, n_in = base.weight.shape
        self.beta, self.alpha1, self.alpha2 = spec.beta, spec.alpha1, spec.alpha2
        # the reference's start: U, A ~ N(0, 1), V = B = 0, R = C = 0 (W' = W, S = |W|)
        self.weight_U = nn.Parameter(torch.randn(n_out, spec.r, generator=gen))
        self.weight_V = nn.Parameter(torch.zeros(spec.r, n_in))
        self.mask_A = nn.Parameter(torch.randn(n_out, spec.mask_r, generator=gen))
        self.mask_B = nn.Parameter(torch.zeros(spec.mask_r, n_in))
        self.mask_R = nn.Parameter(torch.zeros(n_out))
        self.mask_C = nn.Parameter(torch.zeros(n_in))
        # weights kept by the mask now (int: a precision cast leaves it alone); saved with the trained weights
        self.register_buffer("n_kept", torch.tensor(base.weight.numel(), dtype=torch.int64))

    def weight(self) -> torch.Tensor:
        return self.base.weight.float() + self.beta * self.weight_U @ self.weight_V

    def scores(self, w: torch.Tensor) -> torch.Tensor:
        return (w.abs() + self.alpha1 * self.mask_A @ self.mask_B
                + self.alpha2 * (self.mask_R[:, None] + self.mask_C[None, :]))

    def merged_weight(self) -> torch.Tensor:
        w = self.weight()
        return TopK.apply(self.scores(w), int(self.n_kept)) * w

    def delta(self):
        return self.merged_weight() - self.base.weight.float()

    def forward(self, x):
        return F.linear(x, self.merged_weight().to(x.dtype), self.base.bias)
