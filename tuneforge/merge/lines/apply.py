from __future__ import annotations

import torch

from tuneforge.merge.base import Merger
from tuneforge.merge.lines.spec import LinesSpec
from tuneforge.registry import register


@register("merge", "lines", config=LinesSpec)
class Lines(Merger):
    def combine(self, taus):
        from peft.utils import merge_utils

        return merge_utils.task_arithmetic(list(taus), torch.ones(len(taus)))

    def coefficients(self, n_tasks):
        s = self.spec
        return {"alpha": s.alpha if s.alpha is not None else 1.0 / n_tasks, "beta": s.beta}

    def space(self, n_tasks):
        beta = {"beta": tuple(self.spec.beta_range)}
        return beta if self.spec.alpha_range is None else {"alpha": tuple(self.spec.alpha_range), **beta}

    def scale(self, coef, where):
        block, n_blocks = where
        if block is None:  # embeddings, final norm, head
            return coef["alpha"]
        return coef["alpha"] + coef["beta"] * block / max(n_blocks - 1, 1)
