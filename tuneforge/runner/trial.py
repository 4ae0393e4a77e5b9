"""A run that is a trial of an optuna study: <run_dir>/trial.json tells the run so, and its periodic evals go
to the study.

The sweeper writes trial.json into the trial's run directory before it starts the run:
    {"storage": "sqlite:///.../optuna.db", "study": "...", "trial_id": 7, "number": 3, "metric": "eval_loss",
     "pruner": {...OptunaSpec's pruner knobs...}}
Rank 0 opens the study's storage (SQLite: any process on the machine can), reports each periodic eval's metric
at its optimizer step and asks the pruner; the decision is broadcast so every rank stops at the same step, and
the run ends with status "pruned" (exit code 5). No trial.json: no hook, and a run is a plain run.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from tuneforge.distributed import dist
from tuneforge.errors import Pruned
from tuneforge.hooks import Hooks, TrainContext
from tuneforge.logging import secrets

FILE = "trial.json"
PASSWORD_ENV = "TUNEFORGE_OPTUNA_STORAGE_PASSWORD"  # named like a secret: logs redact its value


def shown_url(url: str) -> str:
    """The storage URL without its password, which moves to the environment (ranks inherit it, logs redact it):
    trial.json and the console never hold it."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.password or u.password == secrets.MASK:
        return url
    os.environ[PASSWORD_ENV] = u.password
    return u.render_as_string(hide_password=True)  # the password as *** (secrets.MASK)


def _real_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.password != secrets.MASK:
        return url
    return u.set(password=os.environ.get(PASSWORD_ENV, "")).render_as_string(hide_password=False)


def write(run_dir: Path, storage: str, study: str, trial_id: int, number: int, metric: str, pruner: dict) -> None:
    (run_dir / FILE).write_text(json.dumps({"storage": shown_url(storage), "study": study, "trial_id": trial_id,
                                            "number": number, "metric": metric, "pruner": pruner}, indent=1))


def hooks_for(run_dir: Path | None) -> list[Hooks]:
    """[the trial's reporter] when `run_dir` is a trial's, else []."""
    path = Path(run_dir) / FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    return [TrialReporter(json.loads(path.read_text()))]


@functools.lru_cache(maxsize=4)
def storage(url: str):
    """One optuna storage per URL in a process: the sweeper and its in-process trials share it (opening an RDB
    storage connects and checks its schema, a third of a second each time)."""
    import optuna

    return optuna.storages.get_storage(_real_url(url))


def build_pruner(knobs: dict):
    import optuna

    name = knobs["pruner"]
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=knobs["pruner_startup_trials"],
                                           n_warmup_steps=knobs["pruner_warmup_steps"])
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


class TrialReporter(Hooks):
    def __init__(self, info: dict):
        self.info = info
        self.trial = None

    def on_train_start(self, ctx: TrainContext) -> None:
        if dist.is_main():
            self.trial = self._open()

    def _open(self):
        """The study's trial, or None when it no longer runs (e.g. a finished trial's run resumed by hand)."""
        import optuna

        study = optuna.load_study(study_name=self.info["study"], storage=storage(self.info["storage"]),
                                  pruner=build_pruner(self.info["pruner"]))
        frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == self.info["number"]), None)
        if frozen is None or frozen.state != optuna.trial.TrialState.RUNNING:
            return None
        return optuna.trial.Trial(study, self.info["trial_id"])

    def on_eval(self, ctx: TrainContext, row: dict) -> None:
        prune = False
        metric = self.info["metric"]
        if self.trial is not None and metric in row:
            self.trial.report(float(row[metric]), ctx.step)
            prune = self.trial.should_prune()
        if dist.broadcast_object(prune):
            raise Pruned(f"trial {self.info['number']} pruned at step {ctx.step}: {metric} {row.get(metric, 0):.4f} "
                         "is worse than the pruner allows")
