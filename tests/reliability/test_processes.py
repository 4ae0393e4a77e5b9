"""Processes: a dead rank stops the others within a bounded time, named; nothing is left behind. Secrets never
reach the run directory. An interrupted sweep continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ok, summary, tuneforge
from tests.reliability.helpers import TINY, train


def live_processes_mentioning(text: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text in open(f"/proc/{pid}/cmdline").read():
                out.append(int(pid))
        except OSError:
            pass
    return out


def test_dead_rank_stops_the_others_in_bounded_time(tmp_path):
    t0 = time.time()
    proc = train(tmp_path, "run", "trainer.nproc=2", "zero=zero2", "trainer.max_steps=20", "launcher.grace_s=5",
                 env={"TUNEFORGE_FAULTS": "die@step:step=3:rank=1"})
    assert proc.returncode != 0
    assert "rank 1 exited with code 9" in proc.stderr + proc.stdout
    assert time.time() - t0 < 120
    assert live_processes_mentioning(str(tmp_path / "run")) == []


def test_secrets_never_reach_the_run_directory(tmp_path):
    """Nor the W&B offline run in it (its records, logs and files); tests/integration/test_tracking.py scans an
    MLflow store the same way."""
    canaries = {"env": "cnry-env-7f3a9c", "cli": "cnry-cli-51be02", "config": "cnry-cfg-c0ffee"}
    ok(train(tmp_path, "run", "trainer.max_steps=2", f"model.token={canaries['cli']}", "logger=wandb",
             f"model.arch.api_key={canaries['config']}", env={"HF_TOKEN": canaries["env"]}))
    ok(tuneforge("export", f"run_dir={tmp_path / 'run'}", cwd=tmp_path, env={"HF_TOKEN": canaries["env"]}))
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for where, canary in canaries.items():
                assert canary.encode() not in data, f"{where} secret found in {f}"
    assert "token: '***'" in (tmp_path / "run" / "config.yaml").read_text()


def test_interrupted_sweep_resumes_unfinished_jobs_and_skips_finished(tmp_path):
    sweep = ["-m", *TINY, "trainer.max_steps=6", "trainer.save_every=2", "optim.lr=1e-3,2e-3,3e-3"]
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", *sweep], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "TUNEFORGE_FAULTS": "slow@step:ms=2000:steps=3-5"})  # 6 s to interrupt it
    job1 = None
    deadline = time.time() + 300
    while time.time() < deadline and job1 is None:  # stop the sweep once job 1 has trained 3 steps
        found = list(tmp_path.glob("outputs/multirun/*/1_*/metrics.jsonl"))
        if found and sum('"loss"' in ln for ln in found[0].read_text().splitlines()) >= 3:
            job1 = found[0].parent
        time.sleep(0.5)
    assert job1 is not None, "job 1 never started"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 3, out[-3000:]
    assert summary(job1)["status"] == "preempted"
    job0 = next(job1.parent.glob("0_*"))
    finished_at = (job0 / "summary.json").stat().st_mtime

    again = ok(tuneforge("train", *sweep, "trainer.resume=auto", cwd=tmp_path))
    assert "already finished: skipped" in again.stdout
    assert (job0 / "summary.json").stat().st_mtime == finished_at
    assert "resumed from" in (job1 / "train.log").read_text()
    results = json.loads((job1.parent / "sweep_summary.json").read_text())
    assert [r["status"] for r in results] == ["completed"] * 3
    assert all(summary(job1.parent / r["run_dir"].split("/")[-1])["steps"] == 6 for r in results)
