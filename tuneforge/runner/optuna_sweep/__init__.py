"""`tuneforge train -m hydra/sweeper=optuna ...`: hyperparameter search with optuna (docs/optuna.md).

tuneforge's own sweeper on optuna >= 4 (5.1 tested), not Hydra's `hydra-optuna-sweeper` plugin: its newest
release (1.3.0) requires optuna >= 2.10, < 3 (it is written against optuna 2's distribution classes), which would
hold optuna three major versions back for everything in the environment; and it runs trials through Hydra's
launcher as Hydra jobs that return a number, which knows nothing of tuneforge's runs (their own directories,
resume, pruning on the runner's intermediate evals). The command line reads the same
(`hydra/sweeper=optuna`, `hydra.sweeper.params.<key>=<sweep>`, Hydra's sweep grammar), so a Hydra user's habits
carry over.

    space.py   the knobs and the search space (Hydra sweeps -> optuna distributions), validated at once
    study.py   the study in <sweep_dir>/optuna.db: sampler, resume, interrupted trials retried
    search.py  the loop: validate every trial's corners, then ask -> run -> tell
    board.py   the leaderboard and sweep_summary.json
The run's side is runner/trial.py (the runner imports it; it imports nothing of this folder): <run_dir>/trial.json,
periodic evals reported to the study, the pruner's stop.
"""

from __future__ import annotations


def run(overrides: list[str]) -> int:
    """Run the search the overrides describe (they include hydra/sweeper=optuna); exit code as errors.py."""
    import importlib.util

    from tuneforge.errors import InputError
    from tuneforge.runner.optuna_sweep.search import run_search

    if importlib.util.find_spec("optuna") is None:
        raise InputError(["hydra/sweeper=optuna needs optuna: pip install 'tuneforge[optuna]'"])

    return run_search(overrides)
