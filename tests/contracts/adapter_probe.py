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
from tuneforge.config.compose import compose, load_run_config
from tuneforge.distributed import optim_state as ostate
from tuneforge.runner.runner import Runner


def states(runner) -> dict[str, dict | None]:
    return {n: ostate.get(runner.engine, p) for n, p in runner.objective.lm.named_parameters() if p.requires_grad}


def probe(tmp_path: Path, nproc: int, overrides: list[str]) -> list[dict]:
    """Launch the probe on `nproc` ranks for a run composed from `overrides`; rank 0's records."""
    from tuneforge.runner.start import prepare_run_dir

    run_dir = prepare_run_dir(compose([*overrides, f"trainer.nproc={nproc}"]), tmp_path / "run")
    spawn_ranks("tests.contracts.adapter_probe", run_dir, nproc)
    return torch.load(run_dir / "probe.pt", weights_only=False)


def main(run_dir: Path) -> int:
    runner = Runner(load_run_config(run_dir), run_dir)
    records = []
    build_engine = runner.build_engine

    def hooked_build_engine():
        build_engine()
        on_step_start = runner.method.on_step_start

        def hooked(step, run):
            before, state_before = snapshot(run.objective.lm), states(run)
            on_step_start(step, run)
            records.append({"step": step, "before": before, "after": snapshot(run.objective.lm),
                            "state_before": state_before, "state_after": states(run),
                            "method": copy.deepcopy(run.method.state_dict()),
                            "last": copy.deepcopy(getattr(run.method, "last", {})),
                            "descent": getattr(run.method, "descent_steps", lambda r: 0)(run)})

        runner.method.on_step_start = hooked

    runner.build_engine = hooked_build_engine
    code = runner.run()
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        torch.save(records, run_dir / "probe.pt")
    return code


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
