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
def decompose(w: torch.Tensor, n: int, rank: int, iters: int, seed: int, tol: float = 1e-6):
    """GreBsmo-style low-rank + sparse decomposition W ~ U V + S, rank(U V) <= rank, |supp(S)| <= n (fp32):

        min_{U,V,S} ||W - U V - S||_F^2   s.t.  rank(U V) <= k,  card(S) <= N

    by alternating GreBsmo's bilateral updates (Zhou & Tao 2013) with hard thresholding:

        U_t = Q,  Q R = qr((W - S_{t-1}) V_{t-1}^T)      (left bilateral projection)
        V_t = Q^T (W - S_{t-1})                           (least-squares V given U_t)
        S_t = P_N(W - U_t V_t)                            (the N largest-|.| entries of the residual)

    U_1 V_1 = SVD_k(W) (S_0 = 0: exact SVD up to EXACT_SVD on the smaller side, else a seeded randomized SVD), so
    iters=1 is the single truncated-SVD step. Each update is the exact minimizer of its block given the others
    (span(U_t) = span of the least-squares U for V_{t-1}), so the objective never increases. Stops after `iters`
    iterations or when an iteration lowers the objective by less than `tol` x ||W||_F (float noise). Memory: a
    few dense copies of W plus O((m + n) k); no full SVD above EXACT_SVD. GreBsmo's greedy rank increments are
    not used: the rank is fixed at k = decomp_rank from the start.
    Returns (sorted flat indices of supp(S), objective ||W - U V - S||_F after each iteration)."""
    k, n = min(rank, *w.shape), min(n, w.numel())
    if min(w.shape) <= EXACT_SVD:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, v = u[:, :k] * s[:k], vh[:k]
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(w, q=min(k + 8, *w.shape), niter=6)
        u, v = u[:, :k] * s[:k], v[:, :k].T
    errors, floor, x = [], tol * float(w.norm()), w  # x = W - S_{t-1}
    for t in range(iters):
        if t:
            u = torch.linalg.qr(x @ v.T).Q
            v = u.T @ x
        r = w - u @ v
        index = torch.topk(r.abs().flatten(), n).indices
        x = w.clone()
        x.view(-1)[index] -= r.view(-1)[index]
        r.view(-1)[index] = 0
        errors.append(float(r.norm()))
        del r
        if t and errors[-2] - errors[-1] <= floor:
            break
    return index.sort().values, errors


@torch.no_grad()
def support(w: torch.Tensor, n: int, how: str, rank: int, seed: int, iters: int = 1) -> torch.Tensor:
    """Flat indices of the N entries of S: the support of the sparse part of W's low-rank + sparse decomposition
    (`decompose`, `iters` iterations; on the GPU when there is one), or the largest |W|."""
    device = "cuda" if torch.cuda.is_available() else w.device
    w = w.detach().to(device, torch.float32)
    if how == "residual":
        return decompose(w, n, rank, iters, seed)[0].cpu()
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
