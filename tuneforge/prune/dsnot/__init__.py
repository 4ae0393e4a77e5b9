"""`prune=dsnot`: Dynamic Sparse No Training (Zhang et al., 2024, arXiv 2310.08915; reference zyxxmu/DSnoT
lib/prune.py `prune_DSnoT`, lib/layerwrapper.py): training-free, it changes which weights are kept, never their
values, starting from a Wanda or SparseGPT mask (`init`) and keeping each row's number of zeros.

Per output row of W, with the pruned set P (Sec. 3):
    reconstruction error   e = sum_{j in P} W_j E[X_j]                       (Eq. 4: the expected output change)
    grow                   the pruned weight ranked first by W_j E[X_j] / Var(X_j)^gamma on the side that
                           reduces |e| (the largest when e > 0, the smallest when e < 0)          (Eq. 6-7)
    prune                  the kept weight of lowest Wanda score |W_j| ||X_j|| among those whose W_j E[X_j] has
                           the sign opposite to e (N:M: the lowest Wanda score among the kept weights of the
                           grown weight's group of M, so every group keeps its pattern)          (Eq. 8)
    stop                   when |e| <= threshold, when the swap would flip the sign of e (or not reduce |e|),
                           or after max_cycles swaps                                              (Sec. 3.3)
Each weight changes at most once (grow candidates come from the initial pruned set, prune candidates from the
initial kept set), so a row's sparsity stays exactly what the initial mask gave it, and |e| decreases at every
accepted swap.

Departures from the reference, and why:
- Sign flip: the reference's unstructured path skips its sign check (`--without_same_sign`, parsed with
  type=bool and default True, so always on) and swaps while |e| > threshold even when a swap overshoots to a
  larger |e| of the other sign; here every accepted swap keeps the sign of e and lowers |e| (the paper's stopping
  rule and the issue's: DSnoT never increases |e|). Its N:M path checks the sign, as here.
- Scale of e: the reference's E[X] is the sum of each window's tokens averaged over the windows (2048 x the
  per-token mean); `threshold` is compared on that scale, so 0.1 means what it means there.
- Var(X_j) is the variance over every calibration token (the reference averages per-window variances).
  Features of zero variance are clamped to 1e-12.
- init=sparsegpt: the mask SparseGPT chooses (block-wise, with its OBS updates guiding later columns) on the
  unchanged weights, without SparseGPT's weight updates (DSnoT updates no weight value). The reference computes
  its SparseGPT score from an H it never accumulates (all zeros), so its sparsegpt init is not a SparseGPT mask.
  Its N:M path ranks prune candidates by the init score; here always by the Wanda score (the paper's Eq. 8).
- `skip_modules` ([mlp] by default, the reference's --skip_layer mlp): the linears named so keep the initial
  mask; [] applies DSnoT to every linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tuneforge import registry
from tuneforge.config.spec import knob, one_of
from tuneforge.prune import Pruner, PruneSpec, nm


@dataclass
class DSnoTSpec(PruneSpec):
    name: str = knob("dsnot", "swap pruned and kept weights to cancel each row's expected output change")
    init: str = knob("wanda", "the initial mask: wanda or sparsegpt (its default knobs)")
    threshold: float = knob(0.1, "stop a row once |e| <= threshold (e on the reference's scale: see docs)")
    gamma: float = knob(1.0, "grow ranking W_j E[X_j] / Var(X_j)^gamma (the reference's pow_of_var_regrowing)")
    max_cycles: int = knob(50, "at most this many swaps per row")
    skip_modules: list[str] = field(default_factory=lambda: ["mlp"], metadata={
        "help": "linears whose qualified name has one of these parts keep the initial mask (the reference's "
                "--skip_layer mlp); [] applies DSnoT everywhere"})

    def problems(self) -> list[str]:
        out = super().problems() + one_of(self, "init", ("wanda", "sparsegpt"))
        if self.threshold < 0 or self.gamma < 0 or self.max_cycles < 0:
            out.append(f"threshold={self.threshold}, gamma={self.gamma}, max_cycles={self.max_cycles}: each must be "
                       ">= 0 (the reference's 0.1, 1, 50)")
        return out


def _at(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx.clamp_max(t.shape[1] - 1)[:, None])[:, 0]


def _sorted(key: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(column indices of `where` entries per row, ascending by key, the rest after them; their count per row)."""
    return torch.sort(key.masked_fill(~where, float("inf")), dim=1, stable=True).indices, where.sum(1)


@torch.no_grad()
def dsnot(w: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, sq_norm: torch.Tensor,
          threshold: float, gamma: float = 1.0, max_cycles: int = 50, pattern: str = "unstructured") -> torch.Tensor:
    """The DSnoT mask (True: pruned) of weight w [out, in] from the initial `mask`; mean, var, sq_norm: E[X_j],
    Var(X_j), ||X_j||^2 of the inputs. `threshold` is on the scale of e = sum_pruned W_j mean_j."""
    mask = mask.clone()
    rows = torch.arange(w.shape[0], device=w.device)
    metric = w * mean[None, :]
    e = (metric * mask).sum(1)
    grow = metric / var.clamp_min(1e-12)[None, :] ** gamma
    wanda = w.abs() * sq_norm.sqrt()[None, :]
    up_list, n_pruned = _sorted(-grow, mask)  # largest first
    down_list, _ = _sorted(grow, mask)  # smallest first
    neg_list, n_neg = _sorted(wanda, ~mask & (metric < 0))
    pos_list, n_pos = _sorted(wanda, ~mask & (metric > 0))
    hi = lo = pn = pp = torch.zeros_like(rows)
    touched = torch.zeros_like(mask)
    active = torch.ones_like(rows, dtype=torch.bool)
    pat = nm(pattern)
    for _ in range(max_cycles):
        active &= e.abs() > threshold
        if not active.any():
            break
        up = e > 0  # grow a weight that lowers e: the largest-ranked if e > 0, the smallest if e < 0
        g = torch.where(up, _at(up_list, hi), _at(down_list, lo))
        ok = hi + lo < n_pruned
        if pat is None:  # prune a kept weight whose contribution has the sign opposite to e
            p = torch.where(up, _at(neg_list, pn), _at(pos_list, pp))
            ok &= torch.where(up, pn < n_neg, pp < n_pos)
        else:  # the lowest Wanda score among the untouched kept weights of g's group of M
            m = pat[1]
            group = (g // m * m)[:, None] + torch.arange(m, device=w.device)
            cand = wanda.gather(1, group).masked_fill(mask.gather(1, group) | touched.gather(1, group), float("inf"))
            best = cand.min(1)
            p = group.gather(1, best.indices[:, None])[:, 0]
            ok &= torch.isfinite(best.values)
        e_new = e - metric[rows, g] + metric[rows, p]
        accept = active & ok & (e_new * e >= 0) & (e_new.abs() < e.abs())
        r = rows[accept]
        mask[r, g[accept]], mask[r, p[accept]] = False, True
        touched[r, g[accept]], touched[r, p[accept]] = True, True
        e = torch.where(accept, e_new, e)
        step_up, step_down = (accept & up).long(), (accept & ~up).long()
        hi, lo, pn, pp = hi + step_up, lo + step_down, pn + step_up, pp + step_down
        active = accept
    return mask


@registry.register("prune", "dsnot", config=DSnoTSpec)
class DSnoT(Pruner):
    def __init__(self, spec):
        super().__init__(spec)
        init = registry.entry("prune", spec.init).config
        shared = {k: getattr(spec, k) for k in ("sparsity", "pattern", "scope", "n_samples", "seqlen", "target_modules")}
        self.init = registry.build("prune", init(**shared))

    def prune(self, w, stats, name):
        _, mask0, _ = self.init.prune(w, stats, name)
        before = w.masked_fill(mask0, 0)
        if any(part in self.spec.skip_modules for part in name.split(".")):
            return before, mask0, before
        per_window = stats.tokens / max(stats.windows, 1)  # the reference's E[X] is per window: tokens x mean
        s = self.spec
        mask = dsnot(w, mask0, stats.mean, stats.var, stats.sq_norm, s.threshold / per_window, s.gamma,
                     s.max_cycles, s.pattern)
        return w.masked_fill(mask, 0), mask, before
