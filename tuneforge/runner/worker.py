"""Entry point of one rank: `python -m tuneforge.runner.worker <run_dir>` reads <run_dir>/config.yaml (never
re-composes) and runs it. Launchers start one per rank with RANK / WORLD_SIZE / MASTER_* set."""

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
    return Runner(Run.load(run_dir)).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
