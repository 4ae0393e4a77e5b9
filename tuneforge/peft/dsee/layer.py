"""A DSEE linear: h = W0 x + (s U V + S) x, S sparse with a fixed support of N entries (indices in a buffer,
values trainable)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear

EXACT_SVD = 1024


@torch.no_grad()
def support(w: torch.Tensor, n: int, how: str, rank: int, seed: int) -> torch.Tensor:
    """Flat indices of the N entries of S: the largest |W - L|, L the best rank-`rank` approximation of W (the
    sparse part of a low-rank + sparse decomposition), or the largest |W|. L is an exact SVD for matrices up to
    EXACT_SVD on their smaller side, else a seeded randomized SVD (oversampled, 6 power iterations; on the GPU
    when there is one)."""
    device = "cuda" if torch.cuda.is_available() else w.device
    w = w.detach().to(device, torch.float32)
    if how == "residual":
        k = min(rank, *w.shape)
        if min(w.shape) <= EXACT_SVD:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            low = (u[:, :k] * s[:k]) @ vh[:k]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                u, s, v = torch.svd_lowrank(w, q=min(k + 8, *w.shape), niter=6)
            low = (u[:, :k] * s[:k]) @ v[:, :k].T
        w = w - low
    return torch.topk(w.abs().flatten(), min(n, w.numel())).indices.sort().values.cpu()


class DseeLinear(AdapterLinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, index: torch.Tensor, gen: torch.Generator):
        super().__init__(base)
        n_out, n_in = base.weight.shape
        self.scaling = alpha / r
        self.lora_A = nn.Parameter((torch.rand(r, n_in, generator=gen) * 2 - 1) / math.sqrt(n_in))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))
        self.sparse_values = nn.Parameter(torch.zeros(index.numel()))
        self.register_buffer("sparse_index", index, persistent=False)

    def sparse(self) -> torch.Tensor:
        w = self.base.weight
        flat = torch.zeros(w.numel(), dtype=self.sparse_values.dtype, device=self.sparse_values.device)
        return flat.scatter(0, self.sparse_index, self.sparse_values).view(w.shape)

    def extra(self, x):
        low = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
        return low + F.linear(x, self.sparse().to(x.dtype))

    def delta(self):
        return self.scaling * self.lora_B @ self.lora_A + self.sparse()


@torch.no_grad()
def prune(w: torch.Tensor, how: str, sparsity: float) -> torch.Tensor:
    """Zero the round(sparsity x entries) smallest-magnitude entries (unstructured), or the round(sparsity x rows)
    rows of smallest L2 norm (rows: output neurons)."""
    w = w.clone()
    if how == "unstructured":
        k = round(sparsity * w.numel())
        w.view(-1)[torch.topk(w.abs().flatten(), k, largest=False).indices] = 0
    elif how == "rows":
        k = round(sparsity * w.shape[0])
        w[torch.topk(w.norm(dim=1), k, largest=False).indices] = 0
    return w
