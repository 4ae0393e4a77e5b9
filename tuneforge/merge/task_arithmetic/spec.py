from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import knob
from tuneforge.merge.base import MergeSpec, check_range


@dataclass
class TaskArithmeticSpec(MergeSpec):
    name: str = knob("task_arithmetic", "theta_base + lam * sum of the task vectors (Ilharco et al., 2023)")
    lam: Optional[float] = knob(None, "scaling coefficient lam of the summed task vectors; null: 1/number of inputs")
    lam_range: list[float] = knob([0.1, 1.0], "[low, high] searched for lam with merge.search=true")

    def problems(self):
        return super().problems() + check_range(self, "lam_range")
