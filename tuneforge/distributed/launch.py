"""Launchers start the ranks of one run. Interface: `Launcher(spec).launch(run, log) -> exit code`, where `run`
(tuneforge.config.run.Run) knows its run directory, its nodes (`launcher.nnodes`) and ranks per node
(`trainer.nproc`): world size = nodes x ranks per node, the number the DeepSpeed config and the batch plan use.

`local` spawns this node's `trainer.nproc` worker processes (torchrun-style env: RANK = node_rank x nproc +
local rank, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and watches them. With launcher.nnodes > 1 the
same command is run once per node with launcher.node_rank=0..nnodes-1 and a fixed launcher.master_addr/port
(node 0's address), as with torchrun's static rendezvous. It watches its ranks: if one fails, the others are stopped (SIGTERM, then SIGKILL after
`launcher.grace_s`) and the failing rank is named. SIGTERM / SIGUSR1 sent to the launcher are forwarded to every
rank (they then commit a checkpoint and exit with code 3). Ranks die with the launcher (PR_SET_PDEATHSIG), so
no rank outlives it.
The other launchers (tuneforge/distributed/launchers/: `torchrun`, `deepspeed` with a hostfile, `slurm`) implement
the same method and start the same worker (`python -m tuneforge.runner.worker <run_dir>`) on every node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.spec import Spec, knob, positive
from tuneforge.registry import register


@dataclass
class LauncherSpec(Spec):
    name: str = knob("local", "how ranks are started")
    master_addr: str = knob("127.0.0.1", "rendezvous address")
    master_port: int = knob(0, "rendezvous port (0: pick a free one)")
    grace_s: float = knob(30.0, "seconds the other ranks get to exit after one fails, before being killed")
    nnodes: int = knob(1, "nodes (machines) in the run; world size = nnodes x trainer.nproc")
    node_rank: int = knob(0, "this node's index, 0 .. nnodes-1 (node 0 hosts the rendezvous)")

    def problems(self):
        out = positive(self, "nnodes", "grace_s") + positive(self, "master_port", "node_rank", allow_zero=True)
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            out.append(f"node_rank={self.node_rank} must be in 0 .. nnodes-1 = {self.nnodes - 1}")
        if self.nnodes > 1 and self.master_port == 0:
            out.append("nnodes > 1 needs a fixed rendezvous port every node agrees on: set launcher.master_port "
                       "(e.g. 29500) and launcher.master_addr=<node 0's address>")
        return out


def worker_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tuneforge.runner.worker", str(run_dir)]


def rank_threads(ranks_per_node: int) -> str:
    """OMP_NUM_THREADS for each of this node's ranks (the caller's own setting wins)."""
    return os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks_per_node)))


def die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the launcher dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


@register("launcher", "local", config=LauncherSpec)
class LocalLauncher:
    def __init__(self, spec: LauncherSpec):
        self.spec = spec

    def launch(self, run, log: Path | None = None) -> int:
        from tuneforge.distributed.dist import free_port

        nproc, first = run.ranks_per_node, self.spec.node_rank * run.ranks_per_node
        port = self.spec.master_port or free_port()
        out = open(log, "a") if log else None  # noqa: SIM115 - closed below
        procs = []
        try:
            for r in range(nproc):
                env = dict(os.environ, RANK=str(first + r), LOCAL_RANK=str(r), WORLD_SIZE=str(run.world_size),
                           MASTER_ADDR=self.spec.master_addr, MASTER_PORT=str(port),
                           OMP_NUM_THREADS=rank_threads(nproc), PYTHONUNBUFFERED="1")
                procs.append(subprocess.Popen(worker_cmd(run.run_dir), env=env, stdout=out, preexec_fn=die_with_parent,
                                              stderr=subprocess.STDOUT if out else None))
            with forwarding((signal.SIGTERM, signal.SIGUSR1), procs):
                return self._watch(procs, first)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            if out:
                out.close()

    def _watch(self, procs, first: int = 0) -> int:
        """The run's exit code. A rank that fails (any code but 0, 3 = preempted with its checkpoint committed, or
        5 = pruned: every rank stops at the same step) stops the others; otherwise wait for every rank."""
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0, 3, 5)]
            if failed:
                rank, code = failed[0]
                node = f" (node {self.spec.node_rank})" if self.spec.nnodes > 1 else ""
                print(f"rank {first + rank}{node} exited with code {code}; stopping the other ranks", file=sys.stderr,
                      flush=True)
                self._stop(procs)
                return code
            if all(c is not None for c in codes):
                return 3 if 3 in codes else 5 if 5 in codes else 0
            time.sleep(0.2)

    def _stop(self, procs) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + self.spec.grace_s
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
        stuck = [r for r, p in enumerate(procs) if p.poll() is None]
        if stuck:
            print(f"ranks {stuck} did not stop within {self.spec.grace_s:.0f}s; killed", file=sys.stderr, flush=True)


STOP_SIGNALS: list[str] = []  # stop signals this process received while ranks ran (a sweep stops after the job)


@contextlib.contextmanager
def forwarding(signals, procs):
    """Forward `signals` received by this process to the ranks (main thread only: where Python handles signals).
    `procs`: objects with poll() and send_signal(), or a callable returning them (ranks started by another
    launcher program are found when the signal comes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        STOP_SIGNALS.append(signal.Signals(signum).name)
        for p in procs() if callable(procs) else procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
