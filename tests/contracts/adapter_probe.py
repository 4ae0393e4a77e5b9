"""Runs a real training run (one rank of it) and records, around every `on_step_start`, the adapter tensors, the
method's buffers (SwitchLoRA's pools) and state, the learning rate, and the optimizer state in the DeepSpeed
engine (full values, any ZeRO stage). Rank 0 writes <run_dir>/probe.pt.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python -m tests.contracts.adapter_probe <run_dir>

`check_adam_steps(records, ...)` checks every recorded optimizer step against AdamW written from its equations,
with each element's own step count.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

from tests.conftest import spawn_ranks
from tests.contracts.lisa_probe import snapshot
from tuneforge.config.run import Run
from tuneforge.runner.runner import Runner


def states(runner) -> dict[str, dict | None]:
    return {n: runner.engine.state(p) for n, p in runner.objective.lm.named_parameters() if p.requires_grad}


def buffers(lm) -> dict[str, torch.Tensor]:
    return {n: b.detach().cpu().clone() for n, b in lm.named_buffers() if n.endswith(("cand_a", "cand_b", "w0_fp32"))}


def check_adam_steps(records: list[dict], wd: float, betas=(0.9, 0.999), eps=1e-8) -> dict:
    """Every optimizer step between two records, element by element, against AdamW with the element's own step
    count k (Kingma & Ba's bias correction, decoupled weight decay), computed here in float64 from the moments
    the step left: p1 = p0 (1 - lr wd) - lr (m1 / (1 - b1^k1)) / (sqrt(v1 / (1 - b2^k1)) + eps). An element whose
    count did not move (k1 = k0 = 0: restarted and frozen, or never trained) is bitwise unchanged with zero
    moments; at a first step (k0 = 0, k1 = 1) the moments are those of one gradient (v1 = (1 - b2) g^2 with
    g = m1 / (1 - b1)). Values are the fp32 masters where the engine keeps them. Returns counts of the elements
    checked (`fresh`: first steps of elements restarted mid-run) and the mean update size of those first steps
    over that of the steady elements of the same tensors (`fresh_ratio`)."""
    b1, b2 = betas
    out, fresh_sizes, steady_sizes = {"steps": 0, "fresh": 0, "frozen": 0}, [], []
    for rec, nxt in zip(records, records[1:]):
        lr = rec["lr"]  # the learning rate of the step between the two records
        for name, st0 in rec["state_after"].items():
            st1 = nxt["state_before"][name]
            if st0 is None or st1 is None:
                continue
            shape, aged = rec["after"][name].shape, float(st0["step"]) > 0  # aged: the tensor has stepped
            p0 = (st0["fp32"] if "fp32" in st0 else rec["after"][name]).double().view(shape)
            p1 = (st1["fp32"] if "fp32" in st1 else nxt["before"][name]).double().view(shape)
            k0, k1 = st0["element_step"].view(shape), st1["element_step"].view(shape)
            m1, v1 = st1["exp_avg"].double().view(shape), st1["exp_avg_sq"].double().view(shape)
            held, moved = k1 == k0, k1 == k0 + 1
            assert (held | moved).all() and (k0[held] == 0).all(), (rec["step"], name)
            assert torch.equal(p1[held], p0[held]) and not m1[held].any() and not v1[held].any(), (rec["step"], name)
            k = k1.double().clamp(min=1)
            want = p0 * (1 - lr * wd) - lr * (m1 / (1 - b1**k)) / ((v1 / (1 - b2**k)).sqrt() + eps)
            torch.testing.assert_close(p1[moved], want[moved], rtol=0, atol=1e-6, msg=f"step {rec['step']} {name}")
            first = moved & (k0 == 0)
            g = m1 / (1 - b1)
            torch.testing.assert_close(v1[first], (1 - b2) * g[first] ** 2, rtol=1e-4, atol=1e-12)
            restarted = first & aged  # a first step inside a tensor that has stepped before
            size = (p1 - p0 * (1 - lr * wd)).abs()
            if restarted.any() and (moved & ~first).any():
                fresh_sizes.append(size[restarted].mean().item())
                steady_sizes.append(size[moved & ~first].mean().item())
            out["steps"] += int(moved.sum())
            out["fresh"] += int(restarted.sum())
            out["frozen"] += int(held.sum()) if aged else 0
    out["fresh_ratio"] = sum(fresh_sizes) / max(sum(steady_sizes), 1e-30)
    return out


def probe(tmp_path: Path, nproc: int, overrides: list[str]) -> list[dict]:
    """Launch the probe on `nproc` ranks for a run composed from `overrides`; rank 0's records."""
    from tuneforge.runner.start import prepare_run_dir

    run_dir = prepare_run_dir(Run.compose([*overrides, f"trainer.nproc={nproc}"]), tmp_path / "run")
    spawn_ranks("tests.contracts.adapter_probe", run_dir, nproc)
    return torch.load(run_dir / "probe.pt", weights_only=False)


def main(run_dir: Path) -> int:
    runner = Runner(Run.load(run_dir))
    records = []
    build_engine = runner.build_engine

    def hooked_build_engine():
        build_engine()
        on_step_start = runner.method.on_step_start

        def hooked(ctx):
            before, state_before = snapshot(ctx.model), states(runner)
            pools_before, method_before = buffers(ctx.model), copy.deepcopy(runner.method.state_dict())
            on_step_start(ctx)
            records.append({"step": ctx.step, "before": before, "after": snapshot(ctx.model),
                            "state_before": state_before, "state_after": states(runner),
                            "pools_before": pools_before, "pools_after": buffers(ctx.model), "lr": ctx.engine.lr,
                            "method_before": method_before, "method": copy.deepcopy(runner.method.state_dict()),
                            "last": copy.deepcopy(getattr(runner.method, "last", {})),
                            "descent": getattr(runner.method, "descent_steps", lambda total: 0)(ctx.total_steps)})

        runner.method.on_step_start = hooked

    runner.build_engine = hooked_build_engine
    code = runner.run()
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        torch.save(records, run_dir / "probe.pt")
    return code


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
