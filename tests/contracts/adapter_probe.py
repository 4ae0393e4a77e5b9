"""Runs a real training run (one rank of it) and records, around every `on_step_start`, the adapter tensors and
their optimizer state in the DeepSpeed engine (full values, any ZeRO stage). Rank 0 writes <run_dir>/probe.pt.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python -m tests.contracts.adapter_probe <run_dir>
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
            on_step_start(ctx)
            records.append({"step": ctx.step, "before": before, "after": snapshot(ctx.model),
                            "state_before": state_before, "state_after": states(runner),
                            "method": copy.deepcopy(runner.method.state_dict()),
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
