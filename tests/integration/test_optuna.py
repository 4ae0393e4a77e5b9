"""Optuna search (`tuneforge train -m hydra/sweeper=optuna`) on the tiny recipe, trials in-process: a 6-trial
search prunes bad trials on their intermediate evals, and an interrupted search resumes without running its
finished trials again (the interrupted trial resumes its checkpoint)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")

from tuneforge.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PREEMPTED  # noqa: E402

TINY = ["recipe=quickstart_tiny", "data.checker=none", "data.n_train=16", "data.n_eval=2", "trainer.max_steps=2", "trainer.eval_every=1",
        "trainer.eval_at_start=false", "trainer.resume=auto"]
# a log-lr range whose low end barely moves the random model: those trials trail the median and are pruned
SEARCH = ["hydra/sweeper=optuna", "optim.lr=tag(log,interval(1e-6,3e-2))", "hydra.sweeper.in_process=true",
          "hydra.sweeper.pruner_startup_trials=2"]


def search(out, n_trials: int, *extra: str) -> int:
    import torch

    from tuneforge.cli import main

    threads = torch.get_num_threads()
    try:
        return main(["train", "-m", *TINY, *SEARCH, f"hydra.sweeper.n_trials={n_trials}", f"trainer.output_dir={out}",
                     *extra])
    finally:
        torch.set_num_threads(threads)


def test_search_prunes_and_resumes_after_an_interruption(tmp_path, monkeypatch, capsys):
    out = tmp_path / "search"
    monkeypatch.setenv("TUNEFORGE_FAULTS", "sigterm@step:step=0")  # the first trial is pre-empted after one step
    assert search(out, 3) == EXIT_PREEMPTED
    monkeypatch.delenv("TUNEFORGE_FAULTS")
    assert search(out, 3) == EXIT_OK  # the interrupted trial resumes, two new ones run
    finished = {d.name: (d / "summary.json").stat().st_mtime_ns for d in out.glob("trial_*")}
    assert sorted(finished) == ["trial_0", "trial_2", "trial_3"]
    capsys.readouterr()
    assert search(out, 6) == EXIT_OK  # three more
    shown = capsys.readouterr().out

    trials = {t["trial"]: t for t in json.loads((out / "sweep_summary.json").read_text())}
    states = [t["state"] for t in trials.values()]
    assert len(trials) == 7 and states.count("retried") == 1, states  # 6 trials + the interrupted one
    assert trials[0]["state"] == "retried"
    retry = trials[1]
    assert retry["run_dir"] == str(out / "trial_0") and retry["params"] == trials[0]["params"]
    assert "resumed from" in (out / "trial_0" / "train.log").read_text()
    assert {d: (out / d / "summary.json").stat().st_mtime_ns for d in finished} == finished  # never run again
    assert "pruned" in states, states
    for t in trials.values():
        summary = json.loads((out / t["run_dir"].rsplit("/", 1)[-1] / "summary.json").read_text())
        if t["state"] == "pruned":
            assert summary["status"] == "pruned" and summary["steps"] < 2 and t["exit_code"] == 5
        if t["state"] == "complete":
            assert summary["status"] == "completed" and t["value"] == pytest.approx(summary["eval"]["eval_loss"])
    best = min((t for t in trials.values() if t["state"] == "complete"), key=lambda t: t["value"])
    table = shown[shown.index("optuna search: eval_loss"):]
    assert max(len(line) for line in table.splitlines()) <= 80
    first_row = next(line for line in table.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert f" {best['run_dir'].rsplit('/', 1)[-1]} " in first_row and "complete" in first_row

    import optuna

    study = optuna.load_study(study_name="tuneforge", storage=f"sqlite:///{out / 'optuna.db'}")
    assert len(study.trials) == 7 and study.best_trial.number == best["trial"]


def test_invalid_search_space_starts_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    code = search(out, 2, "peft.r=choice(4,0)", "trainer.micro_batch_size=choice(2,-1)", "hydra.sweeper.metric=exact_match")
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "trial at" in err and "peft.r=0" in err and "micro_batch_size" in err
    assert "hydra.sweeper.metric=exact_match" in err  # data.checker=none: no exact match in the eval
    assert not (out / "optuna.db").exists()
