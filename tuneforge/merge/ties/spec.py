from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import knob, one_of
from tuneforge.merge.base import MergeSpec, check_range


@dataclass
class TiesSpec(MergeSpec):
    name: str = knob("ties", "trim to the top-density entries, elect signs, mean of the agreeing ones (Yadav et al.)")
    density: float = knob(0.2, "fraction of each task vector's entries kept (largest magnitudes; the paper's k = 20%)")
    majority_sign: str = knob("total", "sign election: total (sign of the summed values, the paper) or frequency "
                                       "(sign of most entries)")
    lam: float = knob(1.0, "scaling coefficient lam of the merged vector (the paper's default is 1)")
    lam_range: list[float] = knob([0.5, 1.5], "[low, high] searched for lam with merge.search=true")

    def problems(self):
        out = super().problems() + check_range(self, "lam_range") + one_of(self, "majority_sign", ("total", "frequency"))
        return out + ([] if 0 < self.density <= 1 else [f"density={self.density} must be in (0, 1]"])
