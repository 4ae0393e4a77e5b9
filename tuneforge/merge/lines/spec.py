from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import knob
from tuneforge.merge.base import MergeSpec, check_range


@dataclass
class LinesSpec(MergeSpec):
    name: str = knob("lines", "sum the task vectors, scale block l by alpha + beta * l/(L-1) (Wang et al., LiNeS)")
    alpha: Optional[float] = knob(None, "scaling of the first block, the embeddings and the head; null: 1/number "
                                        "of inputs (the paper's multi-task choice)")
    beta: float = knob(0.5, "added scaling of the last block over the first (the paper tunes it on held-out data)")
    beta_range: list[float] = knob([0.0, 1.0], "[low, high] searched for beta with merge.search=true")
    alpha_range: Optional[list[float]] = knob(None, "[low, high] searched for alpha too (null: alpha stays fixed, "
                                                    "as in the paper)")

    def problems(self):
        out = super().problems() + check_range(self, "beta_range")
        return out + (check_range(self, "alpha_range") if self.alpha_range is not None else [])
