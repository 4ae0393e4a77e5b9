from __future__ import annotations

import torch

from tuneforge.merge.base import Merger
from tuneforge.merge.ties.spec import TiesSpec
from tuneforge.registry import register


@register("merge", "ties", config=TiesSpec)
class Ties(Merger):
    def combine(self, taus):
        from peft.utils import merge_utils

        s = self.spec
        return merge_utils.ties(list(taus), torch.ones(len(taus)), s.density, s.majority_sign)
