"""The Engine over a real DeepSpeed engine (one in-process rank, gloo): a precision mode that brings its own
optimizer gets it used, and the DeepSpeed config leaves the `optim` group's optimizer out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.distributed import dist
from tuneforge.distributed.ds_config import ds_config
from tuneforge.precision.modes import Precision, PrecisionSpec
from tuneforge.runner.engine import Engine

LR = 0.05


@dataclass
class SgdSpec(PrecisionSpec):
    name: str = "test_sgd"


class SgdPrecision(Precision):
    """fp32 with plain SGD as its own optimizer (a stand-in for COAT's compressed-state AdamW)."""

    owns_optimizer = True

    def optimizer(self, groups, optim):
        return torch.optim.SGD(groups, lr=optim.spec.lr)


class Objective(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)

    def forward(self, x, y):
        return ((self.lin(x) - y) ** 2).mean()


def test_a_precision_mode_brings_its_own_optimizer():
    registry.register("precision", "test_sgd", config=SgdSpec)(SgdPrecision)
    try:
        specs = build_specs(compose([f"optim.lr={LR}", "optim.grad_clip=0", "sched=constant"]))
        specs["precision"] = SgdSpec()
        ds = ds_config(specs, 1)
        assert "optimizer" not in ds and ds["zero_allow_untested_optimizer"] is True
        dist.init("cpu")
        model = Objective()
        engine = Engine(model, ds, specs, SgdPrecision(specs["precision"]), "cpu", total_steps=2)
        engine.build([{"params": list(model.parameters())}])
        x, y = torch.randn(5, 4), torch.randn(5, 3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ref = Objective()
        ((ref.lin(x) - y) ** 2).mean().backward()  # the gradient, independently of the engine
        engine.backward(engine.forward({"x": x, "y": y}))
        engine.micro_step()
        assert isinstance(engine.optimizer, torch.optim.SGD) and engine.step_applied()
        for n, p in model.named_parameters():  # one SGD step: p - lr * grad
            torch.testing.assert_close(p.detach(), before[n] - LR * dict(ref.named_parameters())[n].grad)
        assert engine.steps_done == 1 and engine.lr == LR
    finally:
        registry._REGISTRY["precision"].pop("test_sgd")
        dist.shutdown()
