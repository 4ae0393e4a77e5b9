from __future__ import annotations

import torch

from tuneforge.merge.base import Merger
from tuneforge.merge.task_arithmetic.spec import TaskArithmeticSpec
from tuneforge.registry import register


@register("merge", "task_arithmetic", config=TaskArithmeticSpec)
class TaskArithmetic(Merger):
    def combine(self, taus):
        from peft.utils import merge_utils

        return merge_utils.task_arithmetic(list(taus), torch.ones(len(taus)))
