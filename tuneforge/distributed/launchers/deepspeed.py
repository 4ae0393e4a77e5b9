"""launcher=deepspeed: DeepSpeed's own launcher (`python -m deepspeed.launcher.runner`) over a hostfile.

The hostfile lists the nodes, one `host slots=N` line each (N = trainer.nproc; the hosts = launcher.nnodes). One
host (e.g. `localhost slots=2`) is launched directly on this machine. Several hosts are reached through pdsh over
passwordless ssh, from node 0 only: DeepSpeed starts `deepspeed.launcher.launch` on every host, which needs the
same Python environment and the run directory at the same path (a shared filesystem) there.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.spec import knob
from tuneforge.distributed.launch import LauncherSpec
from tuneforge.distributed.launchers import WORKER_MODULE, External
from tuneforge.registry import register

LOCAL = ("localhost", "127.0.0.1")


@dataclass
class DeepSpeedLauncherSpec(LauncherSpec):
    name: str = knob("deepspeed", "how ranks are started")
    hostfile: str = knob("", "DeepSpeed hostfile: one `host slots=N` line per node (N = trainer.nproc)")
    ssh_port: int = knob(0, "ssh port of the other hosts (0: ssh's default)")

    def problems(self):
        return [p for p in super().problems() if "fixed rendezvous port" not in p]  # DeepSpeed's default port


def read_hostfile(path: str) -> dict[str, int]:
    """host -> slots, parsed by DeepSpeed's own reader (its errors name the bad line)."""
    from deepspeed.launcher.runner import fetch_hostfile

    return dict(fetch_hostfile(path) or {})


@register("launcher", "deepspeed", config=DeepSpeedLauncherSpec)
class DeepSpeedLauncher(External):
    def check(self, run) -> list[str]:
        s = self.spec
        if not s.hostfile:
            return ["launcher=deepspeed needs launcher.hostfile=PATH (a file of `host slots=N` lines, e.g. "
                    "`localhost slots=2` on one machine)"]
        if not Path(s.hostfile).is_file():
            return [f"launcher.hostfile={s.hostfile}: file not found"]
        try:
            hosts = read_hostfile(s.hostfile)
        except ValueError as e:
            return [f"launcher.hostfile={s.hostfile}: {e}"]
        out = []
        if len(hosts) != run.nodes:
            out.append(f"launcher.hostfile lists {len(hosts)} host(s) but launcher.nnodes={run.nodes}: "
                       f"set launcher.nnodes={len(hosts)}")
        if wrong := {h: n for h, n in hosts.items() if n != run.ranks_per_node}:
            out.append(f"hostfile slots {wrong} differ from trainer.nproc={run.ranks_per_node}: every host runs "
                       "trainer.nproc ranks")
        if len(hosts) > 1 and not shutil.which("pdsh"):
            out.append(f"launcher=deepspeed with {len(hosts)} hosts starts the other hosts' ranks through pdsh over "
                       "passwordless ssh, and pdsh is not installed: install it (`apt-get install pdsh`) and ssh "
                       "keys for every host, or run launcher=torchrun on each node, or launcher=slurm")
        return out

    def command(self, run) -> list[str]:
        s = self.spec
        hosts = list(read_hostfile(s.hostfile))
        master = s.master_addr
        if len(hosts) > 1 and master in LOCAL:
            master = hosts[0]  # node 0 hosts the rendezvous; every other host must reach it
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={s.hostfile}",
               f"--master_addr={master}", "--no_local_rank", "--module"]
        if len(hosts) == 1:
            from tuneforge.distributed.dist import free_port

            cmd += ["--no_ssh_check", f"--master_port={s.master_port or free_port()}"]  # launched here, no ssh
        elif s.master_port:
            cmd.append(f"--master_port={s.master_port}")  # else DeepSpeed's default, 29500
        if s.ssh_port:
            cmd.append(f"--ssh_port={s.ssh_port}")
        return [*cmd, WORKER_MODULE, str(run.run_dir)]
