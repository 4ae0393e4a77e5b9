from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import knob
from tuneforge.merge.base import MergeSpec, check_range


@dataclass
class DareSpec(MergeSpec):
    name: str = knob("dare", "drop each task-vector entry with probability p, rescale by 1/(1-p), add (Yu et al.)")
    p: float = knob(0.9, "drop probability of each entry (the paper drops up to 90% of an LLM's delta)")
    lam: Optional[float] = knob(None, "scaling coefficient lam of the summed vectors; null: 1/number of inputs")
    lam_range: list[float] = knob([0.1, 1.0], "[low, high] searched for lam with merge.search=true")

    def problems(self):
        return super().problems() + check_range(self, "lam_range") + ([] if 0 <= self.p < 1 else
                                                                      [f"p={self.p} must be in [0, 1)"])
