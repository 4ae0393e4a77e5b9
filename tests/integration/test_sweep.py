"""Multirun sweeps: failing jobs do not stop the others; invalid jobs stop the sweep before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_sweep_through_hydras_submitit_launcher(tmp_path):
    """hydra/launcher=submitit_local runs the jobs through Hydra's submitit plugin; a user recipe from
    --config-dir; outputs in hydra.sweep.dir; a failing job does not stop the other; resume skips finished jobs."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "tiny2.yaml").write_text("# two steps\n#\n#   tuneforge train -cd conf recipe=tiny2\ndefaults:\n"
                                     "  - quickstart_tiny\n  - _self_\n\ntrainer:\n  max_steps: 2\n"
                                     "  eval_at_start: false\ndata:\n  n_eval: 2\n")
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "-cd", str(conf), "recipe=tiny2", "model=tiny_llama,llama2_7b",
            "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
            "model.token=hf_canary_5e3b91"]  # a secret: no file of the sweep (submitit's pickles too) holds it
    proc = tuneforge(*args, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    jobs = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["status"] for j in jobs] == ["completed", "failed"]
    assert [Path(j["run_dir"]).name for j in jobs] == ["0_tiny2-tiny-llama", "1_tiny2-llama2-7b"]
    assert jobs[0]["final_train_loss"] is not None and list((sweep / ".submitit").iterdir())
    assert "is a Hugging Face Hub id" in (sweep / "1_tiny2-llama2-7b" / "train.log").read_text()
    assert "every job: recipe=tiny2" in proc.stdout and "model=llama2_7b" in proc.stdout
    finished = (sweep / "0_tiny2-tiny-llama" / "summary.json").stat().st_mtime
    again = tuneforge(*args, "trainer.resume=auto", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 1 and "already finished: skipped" in again.stdout, again.stdout + again.stderr
    assert (sweep / "0_tiny2-tiny-llama" / "summary.json").stat().st_mtime == finished
    assert not [p for p in sweep.rglob("*") if p.is_file() and b"hf_canary_5e3b91" in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_through_submitit_slurm(tmp_path, slurm):
    """hydra/launcher=submitit_slurm submits the sweep as one sbatch array through Hydra's plugin (needs a
    running Slurm: .ci/run starts a one-node cluster on localhost; skipped, saying why, elsewhere)."""
    sweep = tmp_path / "sweep"
    proc = tuneforge("train", "-m", *TINY, "optim.lr=1e-3,2e-3", "hydra/launcher=submitit_slurm",
                     f"hydra.launcher.partition={slurm.partition}", "hydra.launcher.timeout_min=10",
                     "hydra.job.name=tf_sweep", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = json.loads((sweep / "sweep_summary.json").read_text())
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --job-name=tf_sweep" in text and "#SBATCH --array=0-1" in text and "#SBATCH --time=10" in text
    assert f"#SBATCH --partition={slurm.partition}" in text
