"""MTLoraLinear: a frozen linear W0 plus a shared low-rank update, one low-rank update per task, or both.

    trunk linear (shared only):        h = W0 x + (alpha / r) B_s A_s x
    task linear, `matrix` mode:        h = W0 x + (alpha / r_t) B_t A_t x            t = the sample's task
    routed linear (both):              h = W0 x + (alpha / r) B_s A_s x + (alpha / r_t) B_t A_t x

A trunk linear never reads the task route, so what it computes cannot depend on a sample's task.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuneforge.peft.routing import TaskRoute


def low_rank(n_in: int, r: int, n_out: int) -> tuple[nn.Linear, nn.Linear]:
    """(A, B) initialised as LoRA does: A Kaiming-uniform, B zero, so the update starts at zero."""
    a, b = nn.Linear(n_in, r, bias=False), nn.Linear(r, n_out, bias=False)
    nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
    nn.init.zeros_(b.weight)
    return a, b


class MTLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, route: TaskRoute | None, r: int, task_r: int, alpha: float, dropout: float):
        """r=0: no shared adapter; route=None: no task adapters (a trunk linear)."""
        super().__init__()
        self.base, self.route = base, route
        n_in, n_out = base.in_features, base.out_features
        self.shared = r > 0
        if self.shared:
            self.shared_A, self.shared_B = low_rank(n_in, r, n_out)
            self.scale = alpha / r
        if route is not None:
            pairs = [low_rank(n_in, task_r, n_out) for _ in route.tasks]
            self.task_A, self.task_B = nn.ModuleList(a for a, _ in pairs), nn.ModuleList(b for _, b in pairs)
            self.task_scale = alpha / task_r
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        dtype = base.weight.dtype if base.weight.is_floating_point() else torch.float32
        self.to(device=base.weight.device, dtype=dtype)

    def forward(self, x):
        h = self.drop(x)
        out = self.base(x)
        if self.shared:
            out = out + self.scale * self.shared_B(self.shared_A(h))
        if self.route is not None:
            # Every task branch runs on every sample, times its 0/1 routing mask: each rank's backward touches the
            # same parameters (ZeRO's gradient buckets need that) and another task's modules get exactly zero
            # gradient.
            for t, (a, b) in enumerate(zip(self.task_A, self.task_B)):
                out = out + self.route.mask(t, x) * (self.task_scale * b(a(h)))
        return out

    def factors(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with B A the update `task` adds (scales folded into B; shared and task parts stacked)."""
        a, b = [], []
        if self.shared:
            a.append(self.shared_A.weight)
            b.append(self.scale * self.shared_B.weight)
        if self.route is not None:
            a.append(self.task_A[task].weight)
            b.append(self.task_scale * self.task_B[task].weight)
        return torch.cat(a), torch.cat(b, dim=1)

    @torch.no_grad()
    def delta(self, task: int) -> torch.Tensor:
        """The dense update of `task`, as added to the base weight when merging."""
        a, b = self.factors(task)
        return b @ a

    def merged_linear(self, task: int) -> nn.Linear:
        w = self.base.weight
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_((w.float() + self.delta(task).float()).to(w.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out
