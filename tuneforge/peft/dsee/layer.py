"""A DSEE linear: h = W0 x + (s U V + S) x, S sparse with a fixed support of N entries (indices in a buffer,
values trainable); and the three rules that choose the support (`support`):

    grebsmo    (default) the reference's GreBsmo decomposition of the pretrained weight, rank growing (`grebsmo`)
    residual   a fixed-rank low-rank + sparse decomposition (`decompose`; tuneforge's rule before issue 10)
    magnitude  the N largest |W|
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear

EXACT_SVD = 1024
GREBSMO_INNER = 2  # bilateral-projection sweeps per rank (the reference's `for _ in range(2)`)
SMALL = 1 << 16  # CPU matrices up to this many entries are decomposed on one thread


@contextlib.contextmanager
def one_thread_if_small(w: torch.Tensor):
    """GreBsmo on a small CPU matrix is hundreds of tiny QRs and products: waking CPU threads for each costs more
    than it saves (128 x 64, 100 increments: 0.18 s on one thread, 4-14 s on two of a busy 2-core machine)."""
    threads = torch.get_num_threads()
    small = w.device.type == "cpu" and w.numel() <= SMALL and threads > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(threads)


@torch.no_grad()
def grebsmo(w: torch.Tensor, n: int, iters: int, step: int, tau: float, seed: int):
    """The DSEE reference's support rule (VITA-Group/DSEE run_glue.py, `sparse_method == 'grebsmo'`): a GreBsmo
    low-rank + sparse decomposition W ~ U V + S (Zhou & Tao 2013) whose rank grows greedily. With V_0 ~ N(0, 1)
    of shape 1 x n and rank r_t = 1 + step * t, for t = 0 .. iters-1:

        S <- 0;  GREBSMO_INNER times:   U = qr((W - S) V^T).Q              (left bilateral projection)
                                         V = U^T (W - S)                    (least squares V given U)
                                         S = H_tau(W - U V)                 (hard threshold: |x| < tau -> 0)
        E = W - U V - S                                                      (the entries of W - U V below tau)
        V <- [V; R_step(E)],  R_step(E) = the first `step` rows of R in E = Q R   (greedy rank increment)

    Omega = the N largest |W - U V| of the last sweep. That is the reference's N largest |S| whenever S has at
    least N nonzeros (thresholding keeps the order above tau); with fewer (small-valued or narrow matrices: tiny
    random models end with S = 0) the reference would select every entry, this the N entries nearest to being
    kept.

    R_step(E) is computed as Q_step^T E with Q_step = qr(E[:, :step]).Q (Householder QR: the first `step` columns
    of Q depend on the first `step` columns of E only): a QR of m x step instead of m x n per increment, the
    same rows in exact arithmetic. The rank stops growing at min(m, n) - 1 (apply.py's docstring says why).
    fp32, on w's device. Returns (sorted flat indices of Omega, S, final rank of U V)."""
    m, k = w.shape
    cap = max(min(m, k) - 1, 1)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, k, generator=gen).to(w.device, w.dtype)
    for t in range(iters):
        s = torch.zeros_like(w)
        for _ in range(GREBSMO_INNER):
            x = w - s
            u = torch.linalg.qr(x @ v.T).Q
            v = u.T @ x
            r = w - u @ v
            s = torch.where(r.abs() < tau, 0, r)
        if t < iters - 1 and v.shape[0] + step <= cap:
            e = r - s
            v = torch.cat([v, torch.linalg.qr(e[:, :step]).Q.T @ e])
            del e
    index = torch.topk(r.abs().flatten(), min(n, r.numel())).indices.sort().values
    return index, s, u.shape[1]


@torch.no_grad()
def decompose(w: torch.Tensor, n: int, rank: int, iters: int, seed: int, tol: float = 1e-6):
    """`support=residual`: a fixed-rank low-rank + sparse decomposition W ~ U V + S, rank(U V) <= rank,
    |supp(S)| <= n (fp32):

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
def support(w: torch.Tensor, spec, seed: int) -> torch.Tensor:
    """Sorted flat indices of the `spec.sparse_n` entries of S by the rule `spec.support` (grebsmo, residual or
    magnitude; a DseeSpec), computed in fp32 on the GPU when there is one."""
    device = "cuda" if torch.cuda.is_available() else w.device
    w, n = w.detach().to(device, torch.float32), spec.sparse_n
    if spec.support == "grebsmo":
        with one_thread_if_small(w):
            index = grebsmo(w, n, spec.decomp_iters, spec.decomp_step, spec.decomp_threshold, seed)[0]
    elif spec.support == "residual":
        index = decompose(w, n, spec.decomp_rank, spec.decomp_iters, seed)[0]
    else:
        index = torch.topk(w.abs().flatten(), min(n, w.numel())).indices.sort().values
    return index.cpu()


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
