"""The study: an optuna study in an SQLite file in the sweep directory, so an interrupted search continues.

Resume: the same command with trainer.resume=auto finds the sweep directory (runner/sweep.py's sweep_dir: the
newest earlier search of the same space and fixed overrides) and loads its study. Trials that ended (complete,
pruned, failed) are kept and count toward n_trials. A trial that was interrupted (the search was pre-empted or
killed while it ran) is marked failed in the study and queued again with the same parameters and the same run
directory; it resumes from that run's last checkpoint, as a new trial of the study (optuna cannot reopen a
trial). The interrupted one is recorded as `retried` in sweep_summary.json and does not count toward n_trials.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.runner.optuna_sweep.space import OptunaSpec
from tuneforge.runner.trial import storage

DB = "optuna.db"
RETRY_OF, RUN_DIR = "retry_of", "run_dir"  # user attributes of a trial


def storage_url(spec: OptunaSpec, root: Path) -> str:
    return spec.storage or f"sqlite:///{root / DB}"


def open_study(spec: OptunaSpec, url: str):
    """Create or load the study; the sampler is reseeded past the trials it already holds (a resumed random
    sampler must not draw the first trials' parameters again)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.study_name, storage=storage(url), load_if_exists=True,
                                direction="maximize" if spec.maximize else "minimize")
    study.sampler = sampler(spec, len(study.trials))
    return study


def sampler(spec: OptunaSpec, done: int):
    import optuna

    seed = spec.seed + done
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(0, spec.startup_trials - done))


def existing_direction(url: str, name: str) -> str | None:
    """'minimize'/'maximize' of a study already in the storage, or None."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage(url))
    except KeyError:
        return None
    return study.direction.name.lower()


def retried(study) -> set[int]:
    return {t.user_attrs[RETRY_OF] for t in study.get_trials(deepcopy=False) if RETRY_OF in t.user_attrs}


def ended(study) -> int:
    """Trials that count toward n_trials: finished, pruned or failed, but not those interrupted and retried."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    again = retried(study)
    return sum(t.state in done and t.number not in again for t in study.get_trials(deepcopy=False))


def retry(study, trial_number: int, params: dict, run_dir: str) -> None:
    """Queue the interrupted trial again: same parameters, same run directory (it resumes its checkpoint)."""
    study.enqueue_trial(params, user_attrs={RETRY_OF: trial_number, RUN_DIR: run_dir}, skip_if_exists=False)


def recover(study) -> list[int]:
    """Trials left running by a search that was killed: failed in the study and queued again. Their numbers."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        retry(study, t.number, t.params, t.user_attrs.get(RUN_DIR, ""))
        out.append(t.number)
    return out
