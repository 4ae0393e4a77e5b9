"""Entry point of one rank: `python -m tuneforge.runner.worker <run_dir> [--resume=auto]` reads <run_dir>/config.yaml
(never re-composes) and runs it. Launchers start one per rank with RANK / WORLD_SIZE / MASTER_* set.
`--resume=auto` continues from the run directory's latest checkpoint whatever the config says (a requeued Slurm
job restarting the same run)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from tuneforge.config.run import Run
    from tuneforge.runner.runner import Runner

    run_dir = Path(argv[0])
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # a stop signal after the run has finished changes nothing
        signal.signal(sig, signal.SIG_IGN)
    run = Run.load(run_dir)
    if "--resume=auto" in argv[1:]:
        run.cfg.trainer.resume = run.specs["trainer"].resume = "auto"
    return Runner(run).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
