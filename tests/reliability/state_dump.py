"""One rank of a run built up to its engine, resumed from the checkpoint its config names; rank 0 writes every
trainable parameter's full value and optimizer state (fp32 master, Adam moments, step) to <out>.

    RANK=.. WORLD_SIZE=.. MASTER_*=.. python -m tests.reliability.state_dump <run_dir> <out.pt>
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tuneforge.config.run import Run
from tuneforge.distributed import dist
from tuneforge.distributed.params import gathered
from tuneforge.runner.runner import Runner


def main(run_dir: Path, out: Path) -> int:
    runner = Runner(Run.load(run_dir))
    try:
        for phase in (runner.setup, runner.select_data, runner.build_model, runner.build_engine):
            phase()
        state, weights = {}, {}
        for name, p in runner.objective.lm.named_parameters():
            if p.requires_grad:
                state[name] = runner.engine.state(p)
                with gathered(p):
                    weights[name] = p.detach().cpu().clone()
        if dist.is_main():
            torch.save({"state": state, "weights": weights, "step": runner.step}, out)
    finally:
        runner.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
