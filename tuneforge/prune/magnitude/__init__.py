"""`prune=magnitude`: zero the weights of smallest |W| (the baseline of Wanda, Sun et al., 2023, arXiv 2306.11695,
Sec. 4; reference locuslab/wanda lib/prune.py `prune_magnitude`).

Score S_ij = |W_ij|; comparison group: the whole matrix (`scope=per-layer`, the reference's), or each output row
(`scope=uniform`); N:M: the N smallest of every M consecutive input weights of a row. Needs no calibration data;
when the run has data, the report's reconstruction errors are measured on it.

Departures from the reference: the reference zeroes every |W| <= the k-th smallest (k = int(sparsity x numel),
0-based), i.e. k + 1 entries plus ties; here exactly round(sparsity x numel) entries are zeroed (ties to the lower
index), so the stated sparsity is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.prune import Pruner, PruneSpec, masks
from tuneforge.registry import register


@dataclass
class MagnitudeSpec(PruneSpec):
    name: str = knob("magnitude", "prune the smallest |W|")
    scope: str = knob("per-layer", "uniform (each output row loses exactly `sparsity`) or per-layer (the smallest "
                                   "|W| of the whole matrix: the reference's)")


@register("prune", "magnitude", config=MagnitudeSpec)
class Magnitude(Pruner):
    needs_data = False

    def prune(self, w, stats, name):
        s = self.spec
        m = masks.mask(w.abs(), s.sparsity, s.pattern, s.scope)
        out = w.masked_fill(m, 0)
        return out, m, out
