"""`prune=wanda`: Pruning by Weights and activations (Sun et al., 2023, arXiv 2306.11695; reference
locuslab/wanda lib/prune.py `prune_wanda`, lib/layerwrapper.py).

Score (Eq. 1): S_ij = |W_ij| . ||X_j||_2, the weight's magnitude times the L2 norm of its input feature j over
every calibration token; comparison group (Sec. 3): each output row (`scope=uniform`, the paper's per-output
group), or the whole matrix (`scope=per-layer`, the paper's ablation); N:M: the N lowest of every M consecutive
input weights of a row. No weight update. Calibration (Sec. 4): 128 windows of 2048 tokens, each decoder layer's
inputs the outputs of the already-pruned layers before it.

Departures from the reference:
- Calibration windows come from the recipe's training data (the reference: 128 random C4 windows).
- The reference accumulates ||X_j||^2 / n_samples (a constant factor per layer, which does not change any row's
  ranking); here ||X_j||^2 = G_jj of the shared statistics (calib.Stats).
- Exactly round(sparsity x group) entries per group (the reference: int(); the same whenever it is whole).
- The reference's `--use_variant` (an adaptive per-row threshold) is not provided.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.prune import Pruner, PruneSpec, masks
from tuneforge.registry import register


@dataclass
class WandaSpec(PruneSpec):
    name: str = knob("wanda", "prune the lowest |W| . ||X_j|| of each output row")


def score(w, stats):
    """|W_ij| . ||X_j||_2 (Eq. 1)."""
    return w.abs() * stats.sq_norm.sqrt()[None, :]


@register("prune", "wanda", config=WandaSpec)
class Wanda(Pruner):
    def prune(self, w, stats, name):
        s = self.spec
        m = masks.mask(score(w, stats), s.sparsity, s.pattern, s.scope)
        out = w.masked_fill(m, 0)
        return out, m, out
