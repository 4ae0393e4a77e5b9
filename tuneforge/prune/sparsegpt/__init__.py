"""`prune=sparsegpt`: SparseGPT (Frantar & Alistarh, 2023, arXiv 2301.00774; the reference port in
locuslab/wanda lib/sparsegpt.py, from IST-DASLab/sparsegpt).

Per linear, with calibration inputs X (tokens x in) gathered over n windows:
    H = 2 X^T X / n + lambda I,   lambda = damp . mean(diag H)            (Sec. 3; damp = 0.01)
    H^-1 = U^T U  (U upper Cholesky factor: row i of U holds the inverse Hessian of the columns i.. not yet
                   processed, scaled by 1/sqrt([H_F^-1]_ii): Sec. 3.2 "efficient sequential updates")
Columns are processed left to right in blocks of `blocksize` (128). At the start of each block the mask is chosen
on the block's current weights by the OBS saliency w^2 / [H_F^-1]_ii = (w / U_ii)^2 (Eq. 3; "adaptive mask
selection", Sec. 3.3): `scope=per-layer` (the reference's) zeroes the lowest round(sparsity x rows x blocksize)
of the block, `scope=uniform` the lowest round(sparsity x blocksize) of each row of the block; N:M chooses the N
lowest of each M columns when the sweep reaches them. Then, column j by column j (Eq. 4, the OBS update):
    q_j = w_j with the pruned entries set to 0,   err = (w_j - q_j) / U_jj,
    W[:, j:] -= err U[j, j:]          (the remaining columns of the block absorb the error)
and after the block, W[:, block end:] -= Err U[block, block end:] (the lazy batch update).

Departures from the reference:
- Calibration windows come from the recipe's training data (the reference: 128 random C4 windows).
- Exactly round(sparsity x group) entries per group (the reference zeroes every score <= the int()-th smallest,
  one more than that).
- Computed in fp32 on the layer's device (the reference: fp32 on CUDA); written back in the weight's dtype.
- Input features that no calibration token uses (diag H = 0) get H_jj = 1 and their weights are zeroed, as in
  the reference; these zeros come on top of the mask (a model has such "dead" inputs only with degenerate data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneforge.config.spec import knob
from tuneforge.prune import Pruner, PruneSpec, masks, nm
from tuneforge.registry import register


@dataclass
class SparseGPTSpec(PruneSpec):
    name: str = knob("sparsegpt", "prune by the OBS saliency and update the remaining weights")
    scope: str = knob("per-layer", "per-layer (the lowest saliencies of each column block: the reference's) or "
                                   "uniform (each row of each column block loses exactly `sparsity`)")
    damp: float = knob(0.01, "dampening lambda as a fraction of mean(diag H) (the reference's percdamp)")
    blocksize: int = knob(128, "columns per block of the lazy batch update and of the mask selection")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.damp < 0:
            out.append(f"damp={self.damp} must be >= 0 (the reference's 0.01)")
        if self.blocksize < 1:
            out.append(f"blocksize={self.blocksize} must be >= 1 (the reference's 128)")
        pat = nm(self.pattern)
        if pat is not None and self.blocksize >= 1 and self.blocksize % pat[1]:
            out.append(f"blocksize={self.blocksize} must be a multiple of M={pat[1]} (pattern={self.pattern}): "
                       "set blocksize=128")
        return out


def inverse_hessian_factor(gram: torch.Tensor, windows: int, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): the upper Cholesky factor of (2 G / n + lambda I)^-1, and the input features no token used."""
    h = gram * (2.0 / max(windows, 1))
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True), dead


def sparsegpt(w: torch.Tensor, gram: torch.Tensor, windows: int, sparsity: float, pattern: str = "unstructured",
              scope: str = "per-layer", damp: float = 0.01, blocksize: int = 128):
    """(pruned and updated W, bool mask of the pruned entries) for one weight matrix [out, in] (fp32)."""
    W = w.clone()
    U, dead = inverse_hessian_factor(gram.clone(), windows, damp)
    W[:, dead] = 0
    cols, pat = W.shape[1], nm(pattern)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        d = U1.diagonal()
        err = torch.zeros_like(W1)
        m1 = (masks.mask(W1**2 / d[None, :] ** 2, sparsity, "unstructured", scope) if pat is None
              else torch.zeros_like(W1, dtype=torch.bool))
        for j in range(i2 - i1):
            if pat is not None and j % pat[1] == 0:
                m1[:, j:j + pat[1]] = masks.lowest(W1[:, j:j + pat[1]] ** 2 / d[None, j:j + pat[1]] ** 2, pat[0])
            col = W1[:, j]
            q = col.masked_fill(m1[:, j], 0)
            err[:, j] = (col - q) / d[j]
            W1[:, j:] -= err[:, j, None] * U1[None, j, j:]
            W1[:, j] = q
        W[:, i1:i2], mask[:, i1:i2] = W1, m1
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return W, mask


@register("prune", "sparsegpt", config=SparseGPTSpec)
class SparseGPT(Pruner):
    def prune(self, w, stats, name):
        s = self.spec
        out, m = sparsegpt(w, stats.gram, stats.windows, s.sparsity, s.pattern, s.scope, s.damp, s.blocksize)
        return out, m, w.masked_fill(m, 0)
