"""The Engine over a real DeepSpeed engine (one in-process rank, gloo): a precision mode that brings its own
optimizer gets it used, and the DeepSpeed config leaves the `optim` group's optimizer out; a tuning method that
asks for per-element Adam steps gets them under every ZeRO stage, through state access and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
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


class Rows(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 4, bias=False)

    def forward(self, x, y):
        return ((self.lin(x) - y) ** 2).mean()


@pytest.mark.parametrize("zero,bf16,universal", [("zero0", False, False), ("zero0", True, False), ("zero2", True, True),
                                                 ("zero2_offload", False, False), ("zero3", False, False)])
def test_per_element_steps_under_every_zero_stage(tmp_path, zero, bf16, universal):
    """A method whose caps ask for per-element Adam steps (SwitchLoRA) gets ElementStepAdamW as DeepSpeed's client
    optimizer; restarting a row (adapters.write) zeroes its moments and step count only; the count survives
    optim_state get/put, DeepSpeed's checkpoint and (ZeRO-1/2) the universal conversion that a resume on another
    topology loads; and the restarted row's next update is a fresh Adam step, computed here by hand. (SwitchLoRA
    itself refuses ZeRO-3 for its whole-weight reads; the optimizer and the state access work there too.)"""
    from tuneforge.optim.element_step_adamw import ElementStepAdamW
    from tuneforge.peft.adapters import row_index, write
    from tuneforge.runner import checkpoint

    precision = ["precision=bf16", "precision.params=bf16"] if bf16 else []
    specs = build_specs(compose(["peft=switchlora", f"zero={zero.replace('3', '2')}", *precision, f"optim.lr={LR}",
                                 "optim.grad_clip=0", "optim.weight_decay=0.1", "sched=constant"]))
    specs["zero"] = build_specs(compose([f"zero={zero}"]))["zero"]
    ds = ds_config(specs, 1)
    assert "optimizer" not in ds and ds["zero_allow_untested_optimizer"] is True
    x, y = torch.randn(8, 6), torch.randn(8, 4)
    dist.init("cpu")
    try:
        def build():
            model = Rows()
            engine = Engine(model, ds, specs, Precision(specs["precision"]), "cpu", total_steps=8)
            engine.build([{"params": list(model.parameters())}])
            return model, engine

        def step(engine):
            engine.backward(engine.forward({"x": x.to(engine.module.lin.weight.dtype),
                                            "y": y.to(engine.module.lin.weight.dtype)}))
            engine.micro_step()

        model, engine = build()
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        assert isinstance(inner, ElementStepAdamW)
        p = model.lin.weight
        for _ in range(3):
            step(engine)
        before = engine.state(p)
        assert before["element_step"].view(4, 6).eq(3).all()
        assert write(engine, p, reset=row_index(0, [1]))
        st = engine.state(p)
        for key in ("exp_avg", "exp_avg_sq", "element_step"):
            x1, x0 = st[key].view(4, 6), before[key].view(4, 6)
            assert not x1[1].any() and torch.equal(x1[[0, 2, 3]], x0[[0, 2, 3]])
        engine.put_state(p, engine.state(p))  # a get/put round trip keeps every key
        master0 = st.get("fp32", p.detach().float().flatten()).view(4, 6).double()
        step(engine)
        st = engine.state(p)
        k = st["element_step"].view(4, 6)
        assert k[1].eq(1).all() and k[[0, 2, 3]].eq(4).all()
        m, v = st["exp_avg"].view(4, 6).double(), st["exp_avg_sq"].view(4, 6).double()
        master1 = st.get("fp32", p.detach().float().flatten()).view(4, 6).double()
        fresh = master0[1] * (1 - LR * 0.1) - LR * (m[1] / 0.1) / ((v[1] / 0.001).sqrt() + 1e-8)  # k = 1
        torch.testing.assert_close(master1[1], fresh, rtol=0, atol=1e-6)

        path = checkpoint.save(engine.ds, tmp_path, 4, {}, {}, keep_last=2, lm=model, frozen=set())
        if universal:
            checkpoint.convert(path)
        model2, engine2 = build()
        checkpoint.load(engine2.ds, path, model2, universal=universal)
        got = engine2.state(model2.lin.weight)
        for key in ("exp_avg", "exp_avg_sq", "element_step", *(("fp32",) if "fp32" in st else ())):
            assert torch.equal(got[key], st[key]), key
    finally:
        dist.shutdown()
