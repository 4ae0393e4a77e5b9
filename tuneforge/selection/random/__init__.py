"""`selection=random`: a uniformly random subset of the training set (the baseline every method must beat)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count


@dataclass
class RandomSelectionSpec(Spec):
    name: str = knob("random", "uniform random subset")
    fraction: float = knob(0.5, "share of the training samples kept (ignored when count > 0)")
    count: int = knob(0, "number of samples kept (0: use fraction)")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        return out + ([f"count={self.count} must be >= 0"] if self.count < 0 else [])


@register("selection", "random", config=RandomSelectionSpec)
class RandomSubset(Selector):
    def select(self, samples, ctx):
        n = len(samples)
        return sorted(random.Random(ctx.seed).sample(range(n), keep_count(self.spec.fraction, self.spec.count, n)))
