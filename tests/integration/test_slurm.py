"""launcher=slurm against a real Slurm (a one-node cluster on localhost: scripts/slurm_up.sh, started by .ci/run).
Skipped, saying why, where `sinfo` does not answer. Each test submits a real 2-rank job (tens of seconds)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ok, summary, train_here, train_losses, tuneforge
from tests.slurm import wait_state

# Same global batch (4): the reference is one rank on one big batch, the jobs 2 ranks x micro-batch 2.
COMMON = ["recipe=quickstart_tiny", "peft=full", "trainer.max_steps=8", "trainer.eval_at_start=false", "data.n_eval=4"]
ONE_RANK = ["trainer.nproc=1", "trainer.micro_batch_size=4", "trainer.grad_accum=1"]
TWO_RANKS = ["trainer.nproc=2", "trainer.micro_batch_size=2", "trainer.grad_accum=1"]
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slurm):
    return train_losses(train_here(*COMMON, *ONE_RANK, out=tmp_path_factory.mktemp("slurm") / "one_rank"))


def submit(tmp_path: Path, slurm, *overrides: str, env: dict | None = None) -> tuple[str, Path]:
    out = tmp_path / "run"
    proc = ok(tuneforge("train", *COMMON, *TWO_RANKS, "launcher=slurm", f"launcher.partition={slurm.partition}",
                        f"trainer.output_dir={out}", *overrides, cwd=tmp_path, env=env))
    found = re.search(r"submitted Slurm job (\d+); log: (\S+)", proc.stdout)
    assert found, proc.stdout[-2000:]
    assert found[2] == f"{out}/slurm-{found[1]}.out"
    return found[1], out


def test_slurm_job_trains_like_local_ranks(slurm, reference, tmp_path):
    """sbatch -> srun -> 2 ranks (SLURM_PROCID/LOCALID/NTASKS mapped): the loss curve of one big batch."""
    job, out = submit(tmp_path, slurm, "launcher.wait=true")
    script = (out / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --signal=USR1@120" in script
    assert summary(out)["status"] == "completed" and summary(out)["world_size"] == 2
    torch.testing.assert_close(torch.tensor(train_losses(out)), torch.tensor(reference), rtol=1e-5, atol=1e-5)


def test_requeued_job_resumes_from_its_checkpoint(slurm, reference, tmp_path):
    """`scontrol requeue` mid-run: the ranks get SIGTERM, commit a checkpoint and exit 3; the requeued job starts
    again with --resume=auto and finishes the run, whose loss curve is the uninterrupted one's."""
    job, out = submit(tmp_path, slurm, env={"TUNEFORGE_FAULTS": "slow@step:ms=1500:steps=3-8"})
    deadline = time.time() + 300
    while time.time() < deadline and len(train_losses(out) if (out / "metrics.jsonl").is_file() else []) < 2:
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_state(job, ("PENDING",), timeout=120)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)  # else Slurm waits ~2 min
    assert wait_state(job, FINISHED, timeout=600) == "COMPLETED"
    log = (out / f"slurm-{job}.out").read_text()
    assert "exit code 3" in log and "resumed from" in log, log[-3000:]
    s = summary(out)
    assert s["status"] == "completed" and s["steps"] == 8
    torch.testing.assert_close(torch.tensor(train_losses(out)), torch.tensor(reference), rtol=1e-5, atol=1e-5)
