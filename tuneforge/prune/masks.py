"""Masks from scores: True marks an entry to prune (the lowest scores of each comparison group).

    count(sparsity, n)                      entries of a group of n to prune: round(sparsity x n) (the references
                                            take int(); equal whenever sparsity x n is whole)
    lowest(score, k)                        the k lowest of each row of `score` (ties: the lower column first)
    mask(score, sparsity, pattern, scope)   the mask of one weight matrix [out, in]:
        N:M            N lowest of every M consecutive input columns of each row (scope does not apply)
        uniform        round(sparsity x in) lowest of each output row: Wanda's per-output comparison group (Wanda
                       Sec. 3, "comparison group"); every row, so every layer, has the same sparsity
        per-layer      round(sparsity x out x in) lowest of the whole matrix: the per-layer group of Wanda's
                       ablation (Table 7) and of magnitude pruning; each layer has exactly `sparsity`, its rows
                       differ
Both scopes give every pruned linear the same sparsity (the papers' uniform layer-wise sparsity); they differ in
where inside a matrix the zeros may fall.
"""

from __future__ import annotations

import torch

from tuneforge.prune import nm


def count(sparsity: float, n: int) -> int:
    return round(sparsity * n)


def lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask, True at the k lowest entries of each row (last dim) of `score`; ties go to the lower index."""
    out = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        out.scatter_(-1, torch.sort(score, dim=-1, stable=True).indices[..., :k], True)
    return out


def mask(score: torch.Tensor, sparsity: float, pattern: str = "unstructured", scope: str = "uniform") -> torch.Tensor:
    rows, cols = score.shape
    pat = nm(pattern)
    if pat is not None:
        n, m = pat
        return lowest(score.reshape(rows, cols // m, m), n).reshape(rows, cols)
    if scope == "per-layer":
        return lowest(score.reshape(1, -1), count(sparsity, score.numel())).reshape(rows, cols)
    return lowest(score, count(sparsity, cols))
