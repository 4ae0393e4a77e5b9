from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.merge.base import MergeSpec, check_range


@dataclass
class PcbSpec(MergeSpec):
    name: str = knob("pcb", "parameter competition balancing: weight each entry by its importance within and across "
                            "tasks, keep the top r (Du et al., 2024)")
    ratio: float = knob(0.1, "r: fraction of each task vector's entries kept, by balanced importance")
    clamp: float = knob(0.0001, "fraction of the largest and of the smallest |tau| clamped before normalising "
                                "(outliers; the authors' 1e-4); 0: none")
    lam: float = knob(1.0, "scaling coefficient lam of the merged vector")
    lam_range: list[float] = knob([0.8, 1.3], "[low, high] searched for lam with merge.search=true (the paper's)")

    def problems(self):
        out = super().problems() + check_range(self, "lam_range")
        out += [] if 0 < self.ratio <= 1 else [f"ratio={self.ratio} must be in (0, 1]"]
        return out + ([] if 0 <= self.clamp < 0.5 else [f"clamp={self.clamp} must be in [0, 0.5)"])
