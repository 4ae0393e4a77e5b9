"""Runs a real LISA training run (one rank of it) and records, at every step start, every parameter's value and
which parameters the DeepSpeed engine keeps optimizer state for. Rank 0 writes <run_dir>/probe.pt.

    RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. python -m tests.contracts.lisa_probe <run_dir>
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tuneforge.config.run import Run
from tuneforge.distributed import dist
from tuneforge.distributed import optim_state as ostate
from tuneforge.distributed.params import gathered
from tuneforge.runner.runner import Runner


def snapshot(lm) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in lm.named_parameters():
        with gathered(p):
            out[n] = p.detach().cpu().clone()
    return out


def main(run_dir: Path) -> int:
    runner = Runner(Run.load(run_dir))
    records = []

    def record(step: int) -> None:
        lm, engine = runner.objective.lm, runner.engine.ds
        active = [n for n, p in lm.named_parameters() if p.requires_grad]
        names = [n for n, _ in lm.named_parameters()]
        local = [float(ostate.has_state(engine, p)) for _, p in lm.named_parameters()]  # a rank may hold no shard
        stateful = [n for n, v in zip(names, dist.all_sum(local)) if v > 0]
        numel = {n: int(getattr(p, "ds_numel", p.numel())) for n, p in lm.named_parameters()}
        held = int(dist.all_sum([ostate.held_numel(engine)])[0])
        records.append({"step": step, "params": snapshot(lm), "active": active, "stateful": stateful,
                        "held": held, "numel": numel, "layers": list(runner.method.active),
                        "kind": ostate.kind(engine), "world": dist.world()})

    build_engine = runner.build_engine

    def hooked_build_engine():
        build_engine()
        on_step_start = runner.method.on_step_start

        def hooked(ctx):
            on_step_start(ctx)
            record(ctx.step)

        runner.method.on_step_start = hooked

    save = runner.save

    def hooked_save():
        record(runner.step)
        save()

    runner.build_engine, runner.save = hooked_build_engine, hooked_save
    code = runner.run()
    if code == 0 and int(__import__("os").environ.get("RANK", "0")) == 0:
        torch.save(records, run_dir / "probe.pt")
    return code


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
