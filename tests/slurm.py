"""A running Slurm for the tests that submit real jobs (`slurm` fixture), and helpers to follow a job.

`.ci/run` starts a one-node cluster on localhost with scripts/slurm_up.sh before the suite; elsewhere (a laptop,
a machine without apt or root) the fixture skips the test and says how to get one. tests/conftest.py imports the
fixture, so any test can ask for it:

    @pytest.mark.slurm
    def test_something(slurm): ...   # slurm.partition, slurm.node
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest

START = "start a one-node cluster on this machine with `sudo scripts/slurm_up.sh` (docs/cluster.md)"


@dataclass(frozen=True)
class Slurm:
    partition: str
    node: str


def find_slurm() -> tuple[Slurm | None, str]:
    """(the cluster, '') when `sinfo` answers with a usable node; else (None, why not)."""
    if not shutil.which("sinfo"):
        return None, "sinfo is not installed"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %n %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer within 15 s (slurmctld not running?)"
    if out.returncode != 0:
        return None, f"sinfo failed: {out.stderr.strip()[:200]}"
    for line in out.stdout.splitlines():
        partition, node, state = line.split()
        if state.rstrip("*") in ("idle", "mixed", "allocated", "completing"):
            return Slurm(partition.rstrip("*"), node), ""
    return None, f"no usable Slurm node (sinfo: {out.stdout.strip()[:200] or 'nothing'})"


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    cluster, why = find_slurm()
    if cluster is None:
        pytest.skip(f"no running Slurm: {why}; {START}")
    return cluster


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return fields.get("JobState", "")


def wait_state(job_id: str, states: tuple[str, ...], timeout: float = 600) -> str:
    """Poll until the job is in one of `states`; the state reached (fails the test on timeout)."""
    deadline, state = time.time() + timeout, ""
    while time.time() < deadline:
        state = job_state(job_id)
        if state in states:
            return state
        time.sleep(1)
    raise AssertionError(f"Slurm job {job_id} still {state or 'unknown'} after {timeout:.0f} s; wanted {states}")
