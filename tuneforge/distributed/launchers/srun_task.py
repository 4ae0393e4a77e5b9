"""One Slurm task becomes one rank: `srun python -m tuneforge.distributed.launchers.srun_task <run_dir> [...]`.

srun starts one task per rank (tasks per node = trainer.nproc); each maps Slurm's environment to the
torch.distributed one and replaces itself with the worker (exec: Slurm's signals reach the worker directly):

    SLURM_PROCID -> RANK    SLURM_LOCALID -> LOCAL_RANK    SLURM_NTASKS -> WORLD_SIZE
    MASTER_ADDR: the first host of SLURM_JOB_NODELIST (`scontrol show hostnames`), set by the batch script
"""

from __future__ import annotations

import os
import subprocess
import sys

from tuneforge.distributed.launch import worker_cmd


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`node[01-04],gpu7` -> node01), as Slurm itself expands it."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def rank_env(environ: dict) -> dict[str, str]:
    """The torch.distributed variables of this Slurm task."""
    local = int(environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0] or 1)
    cpus = int(environ.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
    master = environ.get("MASTER_ADDR") or first_host(environ["SLURM_JOB_NODELIST"])
    return {"RANK": environ["SLURM_PROCID"], "LOCAL_RANK": environ["SLURM_LOCALID"],
            "WORLD_SIZE": environ["SLURM_NTASKS"], "LOCAL_WORLD_SIZE": str(local), "MASTER_ADDR": master,
            "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + int(environ["SLURM_JOB_ID"]) % 20000),
            "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS") or str(max(1, cpus // local)), "PYTHONUNBUFFERED": "1"}


def main(argv: list[str]) -> None:
    cmd = worker_cmd(argv[0]) + argv[1:]
    os.execve(cmd[0], cmd, {**os.environ, **rank_env(os.environ)})


if __name__ == "__main__":
    main(sys.argv[1:])
