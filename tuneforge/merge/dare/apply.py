from __future__ import annotations

import torch

from tuneforge.merge.base import Merger
from tuneforge.merge.dare.spec import DareSpec
from tuneforge.registry import register


@register("merge", "dare", config=DareSpec)
class Dare(Merger):
    def combine(self, taus):
        from peft.utils import merge_utils

        weights = torch.ones(len(taus))
        if self.spec.p == 0:  # nothing dropped (PEFT warns at density 1): task arithmetic
            return merge_utils.task_arithmetic(list(taus), weights)
        return merge_utils.dare_linear(list(taus), weights, 1 - self.spec.p)
