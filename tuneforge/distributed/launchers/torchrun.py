"""launcher=torchrun: this node's ranks are started by PyTorch's own launcher, `python -m torch.distributed.run`.

Run the same `tuneforge train ... launcher=torchrun launcher.nnodes=N launcher.node_rank=I` on every node, with
either a static rendezvous on node 0 (`launcher.master_addr/master_port`, like `torchrun --master-addr`) or a c10d
rendezvous endpoint (`launcher.rdzv_endpoint=host:port`; torchrun then numbers the nodes as they join, and
launcher.node_rank is not used). Torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* for each worker.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tuneforge.config.spec import knob
from tuneforge.distributed.launch import LauncherSpec, worker_cmd
from tuneforge.distributed.launchers import External
from tuneforge.registry import register


@dataclass
class TorchrunSpec(LauncherSpec):
    name: str = knob("torchrun", "how ranks are started")
    rdzv_endpoint: str = knob("", "host:port of a c10d rendezvous (instead of master_addr/port); torchrun assigns "
                                  "node ranks in the order nodes join")
    rdzv_id: str = knob("tuneforge", "rendezvous id, the same on every node of one run (with rdzv_endpoint)")

    def problems(self):
        out = super().problems()
        if self.rdzv_endpoint:
            out = [p for p in out if "fixed rendezvous port" not in p]
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                out.append(f"rdzv_endpoint={self.rdzv_endpoint!r} must be host:port, e.g. node0.cluster:29400")
        return out


@register("launcher", "torchrun", config=TorchrunSpec)
class TorchrunLauncher(External):
    def command(self, run) -> list[str]:
        s = self.spec
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={run.nodes}",
               f"--nproc-per-node={run.ranks_per_node}", "--max-restarts=0"]
        if s.rdzv_endpoint:
            cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={s.rdzv_endpoint}", f"--rdzv-id={s.rdzv_id}"]
        else:
            from tuneforge.distributed.dist import free_port

            cmd += [f"--node-rank={s.node_rank}", f"--master-addr={s.master_addr}",
                    f"--master-port={s.master_port or free_port()}"]
        return cmd + worker_cmd(run.run_dir)[1:]  # "-m tuneforge.runner.worker <run_dir>"
