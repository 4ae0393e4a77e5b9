"""The study of an optuna search (real optuna, SQLite in tmp): trials left running by a killed search are failed and
queued again with their values and run directory; only trials that ended count toward n_trials; a resumed
sampler does not draw the first trials' values again; the leaderboard ranks complete trials by the metric."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")

from tuneforge.runner.optuna_sweep import board, study  # noqa: E402
from tuneforge.runner.optuna_sweep.space import parse, suggest  # noqa: E402


def test_a_trial_left_running_is_retried_with_its_values_and_directory(tmp_path):
    s = parse(["optim.lr=tag(log,interval(1e-5,1e-2))", "hydra.sweeper.sampler=random"])
    url = study.storage_url(s.spec, tmp_path)
    st = study.open_study(s.spec, url)
    done = st.ask()
    suggest(done, s.params[0])
    st.tell(done, 1.0)
    killed = st.ask()  # the search died while this trial ran
    lr = suggest(killed, s.params[0])
    killed.set_user_attr(study.RUN_DIR, str(tmp_path / "trial_1"))

    st = study.open_study(s.spec, url)  # the rerun
    assert study.recover(st) == [1]
    assert study.ended(st) == 1  # the killed trial does not count
    again = st.ask()
    assert suggest(again, s.params[0]) == lr
    assert again.user_attrs == {study.RETRY_OF: 1, study.RUN_DIR: str(tmp_path / "trial_1")}
    st.tell(again, 0.5)
    assert study.ended(st) == 2 and study.retried(st) == {1}

    rows = board.rows(st, s.spec, tmp_path, {})
    assert [(r["trial"], r["state"]) for r in rows] == [(0, "complete"), (1, "retried"), (2, "complete")]
    assert [r["trial"] for r in board.ranked(rows, maximize=False)] == [2, 0, 1]


def test_a_resumed_sampler_draws_new_values(tmp_path):
    s = parse(["optim.lr=interval(0.0,1.0)", "hydra.sweeper.sampler=random"])
    url = study.storage_url(s.spec, tmp_path)
    first = []
    for _ in range(2):  # two invocations of one trial each
        st = study.open_study(s.spec, url)
        t = st.ask()
        first.append(suggest(t, s.params[0]))
        st.tell(t, 0.0)
    assert first[0] != first[1]


def test_a_storage_password_never_reaches_trial_json(tmp_path, monkeypatch):
    from tuneforge.logging import secrets
    from tuneforge.runner import trial

    monkeypatch.delenv(trial.PASSWORD_ENV, raising=False)
    url = "postgresql://tuner:s3cret-pw@db.example/optuna"
    trial.write(tmp_path, url, "tuneforge", 1, 0, "eval_loss", {})
    text = (tmp_path / trial.FILE).read_text()
    assert "s3cret-pw" not in text and "tuner:***@db.example" in text
    assert trial._real_url(json.loads(text)["storage"]) == url  # what the run's rank 0 opens
    assert secrets.redact(f"connecting to {url}") == "connecting to postgresql://tuner:***@db.example/optuna"
