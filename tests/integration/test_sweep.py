"""Multirun sweeps: failing jobs do not stop the others; invalid jobs stop the sweep before anything runs."""

from __future__ import annotations

import json

from tests.conftest import tuneforge

TINY = ["recipe=quickstart_tiny", "trainer.max_steps=2", "trainer.eval_at_start=false", "data.n_eval=2"]


def test_sweep_with_a_failing_job(tmp_path):
    proc = tuneforge("train", "-m", "model=tiny_llama,llama2_7b,tiny_llama", *TINY, cwd=tmp_path,
                     env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (summary_file,) = (tmp_path / "outputs" / "multirun").glob("*/sweep_summary.json")
    jobs = json.loads(summary_file.read_text())
    assert [j["status"] for j in jobs] == ["completed", "failed", "completed"]
    assert [j["overrides"][0] for j in jobs] == ["model=tiny_llama", "model=llama2_7b", "model=tiny_llama"]
    assert all(j["final_train_loss"] is not None for j in jobs if j["status"] == "completed")
    for col in ("overrides", "status", "train loss", "eval loss", "run dir"):
        assert col in proc.stdout
    log = (summary_file.parent / jobs[1]["run_dir"].split("/")[-1] / "train.log").read_text()
    assert "Traceback" in log and "is a Hugging Face Hub id" in log and "model.path" in log


def test_sweep_validates_every_job_before_starting(tmp_path):
    proc = tuneforge("train", "-m", *TINY, "peft=lora", "peft.r=4,0", "optim.lr=1e-3,-1", cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr
    assert "sweep of 4 jobs not started" in err
    assert err.count("peft.r=0 must be > 0") == 2 and err.count("optim.lr=-1.0 must be > 0") == 2
    assert not (tmp_path / "outputs").exists()
