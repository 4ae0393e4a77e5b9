from __future__ import annotations

import math

import pytest
import torch

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose


def sched(name, total, *overrides):
    return registry.build("sched", build_specs(compose([f"sched={name}", *overrides]))["sched"], total)


def test_warmup_never_wastes_a_step_and_reaches_peak():
    s = sched("constant", 10, "sched.warmup_steps=3")
    assert [s.factor(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_and_linear_shapes():
    c = sched("cosine", 10, "sched.warmup_ratio=0", "sched.min_lr_ratio=0.1")
    assert c.factor(0) == 1.0 and c.factor(10) == pytest.approx(0.1)
    assert c.factor(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = sched("linear", 10, "sched.warmup_steps=2")
    assert lin.factor(2) == 1.0 and lin.factor(6) == pytest.approx(0.5)


def test_lambda_lr_drives_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    lr = sched("linear", 4, "sched.warmup_steps=0").build(opt)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr.step()
    assert seen == pytest.approx([0.1, 0.075, 0.05, 0.025])
