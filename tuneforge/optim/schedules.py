"""`sched=cosine|linear|constant`: learning-rate multipliers with linear warmup, stepped once per optimizer step.

factor(step) for step = 0, 1, ... (the optimizer step about to run), W = warmup steps, T = total steps:
    warmup     (step + 1) / (W + 1)                        for step < W (no step is wasted at lr 0)
    constant   1
    linear     1 - p,  p = (step - W) / (T - W)
    cosine     m + (1 - m) * (1 + cos(pi * p)) / 2,  m = min_lr_ratio
Built as a torch LambdaLR that the DeepSpeed engine steps and checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob, positive
from tuneforge.registry import register


@dataclass
class SchedSpec(Spec):
    name: str = knob("cosine", "learning-rate schedule")
    warmup_steps: int = knob(0, "linear warmup steps (overrides warmup_ratio when > 0)")
    warmup_ratio: float = knob(0.0, "warmup as a share of total steps")
    min_lr_ratio: float = knob(0.0, "cosine: final lr as a share of the peak")

    def problems(self):
        out = positive(self, "warmup_steps", "warmup_ratio", "min_lr_ratio", allow_zero=True)
        return out + ([f"min_lr_ratio={self.min_lr_ratio} must be <= 1"] if self.min_lr_ratio > 1 else [])

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps > 0 else int(round(self.warmup_ratio * total_steps))


class Schedule:
    def __init__(self, spec: SchedSpec, total_steps: int):
        self.spec, self.total, self.w = spec, total_steps, spec.warmup(total_steps)

    def decay(self, p: float) -> float:
        raise NotImplementedError

    def factor(self, step: int) -> float:
        if step < self.w:
            return (step + 1) / (self.w + 1)
        p = min(1.0, (step - self.w) / max(1, self.total - self.w))
        return self.decay(p)

    def build(self, optimizer, start_step: int = 0):
        """LambdaLR whose epoch counter is the absolute optimizer step (so a rebuilt or resumed engine continues)."""
        import warnings

        import torch

        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)
        if start_step:
            sched.last_epoch = start_step - 1
            with warnings.catch_warnings():  # "scheduler stepped before optimizer": intended, we fast-forward
                warnings.simplefilter("ignore", UserWarning)
                sched.step()
        return sched


@register("sched", "constant", config=SchedSpec)
class Constant(Schedule):
    def decay(self, p):
        return 1.0


@register("sched", "linear", config=SchedSpec)
class Linear(Schedule):
    def decay(self, p):
        return 1.0 - p


@register("sched", "cosine", config=SchedSpec)
class Cosine(Schedule):
    def decay(self, p):
        m = self.spec.min_lr_ratio
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))
