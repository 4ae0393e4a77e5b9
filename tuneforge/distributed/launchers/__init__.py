"""Launchers that hand the start of this node's ranks to a real launcher program, one module each:

    torchrun.py   `python -m torch.distributed.run` (static master address/port, or a c10d rendezvous endpoint)
    deepspeed.py  DeepSpeed's own launcher (`deepspeed.launcher.runner`) over a hostfile (pdsh/ssh across hosts)
    slurm.py      an sbatch script whose `srun` starts one task per rank (the Slurm environment mapped to ranks)

Every one starts the same worker (`python -m tuneforge.runner.worker <run_dir>`). `External` is what torchrun and
DeepSpeed share: run the launcher program, forward SIGTERM/SIGUSR1 straight to the worker processes it started
(the launcher programs would otherwise kill them instead of letting them checkpoint), and report a run whose
ranks committed a pre-emption checkpoint as exit code 3 whatever the launcher program's own exit code says.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tuneforge.distributed.launch import die_with_parent, forwarding, rank_threads
from tuneforge.errors import EXIT_PREEMPTED, EXIT_PRUNED, InputError

WORKER_MODULE = "tuneforge.runner.worker"
CLEAN_STOPS = {"preempted": EXIT_PREEMPTED, "pruned": EXIT_PRUNED}  # a non-zero launcher exit the run itself chose


def worker_processes(pid: int) -> list:
    """The tuneforge worker processes below process `pid` (psutil, a DeepSpeed dependency)."""
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in below:
        try:
            if WORKER_MODULE in p.cmdline():
                out.append(p)
        except psutil.Error:
            continue
    return out


class _Worker:
    """A psutil process with the two methods `forwarding` calls."""

    def __init__(self, proc):
        self.proc = proc

    def poll(self):
        return None if self.proc.is_running() else 0

    def send_signal(self, signum):
        import psutil

        try:
            self.proc.send_signal(signum)
        except psutil.Error:
            pass


def run_status(run_dir: Path) -> str | None:
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


class External:
    """Base of the launchers that run a launcher program on this node: subclasses give `command(run)` and may
    list problems found on this machine in `check(run)` (raised together, before anything starts)."""

    def __init__(self, spec):
        self.spec = spec

    def command(self, run) -> list[str]:
        raise NotImplementedError

    def check(self, run) -> list[str]:
        return []

    def launch(self, run, log: Path | None = None) -> int:
        import os

        if problems := self.check(run):
            raise InputError(problems)
        env = dict(os.environ, OMP_NUM_THREADS=rank_threads(run.ranks_per_node), PYTHONUNBUFFERED="1")
        out = open(log, "a") if log else None  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(self.command(run), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    preexec_fn=die_with_parent)
            try:
                with forwarding((signal.SIGTERM, signal.SIGUSR1), lambda: map(_Worker, worker_processes(proc.pid))):
                    code = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
        finally:
            if out:
                out.close()
        return CLEAN_STOPS.get(run_status(run.run_dir), code) if code != 0 else code
