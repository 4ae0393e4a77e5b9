"""`tuneforge train -m hydra/sweeper=optuna ...`: hyperparameter search with optuna (docs/optuna.md).

tuneforge's own sweeper on optuna >= 4, not Hydra's `hydra-optuna-sweeper` plugin: that package pins
optuna < 3 (it imports distributions optuna 3 removed, e.g. UniformDistribution), would downgrade optuna for
every other user of the environment, and runs trials through Hydra's launcher, which knows nothing of
tuneforge's runs (their own directories, resume, pruning on the runner's evals). The command line reads the same
(`hydra/sweeper=optuna`, `hydra.sweeper.params.<key>=<sweep>`, Hydra's sweep grammar), so a Hydra user's habits
carry over.

    space.py   the knobs and the search space (Hydra sweeps -> optuna distributions), validated at once
    study.py   the study in <sweep_dir>/optuna.db: sampler, resume, interrupted trials retried
    trial.py   the run side: <run_dir>/trial.json, evals reported to the study, the pruner's stop
    board.py   the leaderboard and sweep_summary.json
    search.py  the loop: validate every trial's corners, then ask -> run -> tell
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
