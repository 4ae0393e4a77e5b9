"""A Weights & Biases run (`wandb.init`). Offline by default: the run's records go to
<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb and need no network; `wandb sync <run_dir>/wandb/offline-run-*`
uploads them later (the parts of a resumed run in the order they ran). logger.mode=online logs live.

No console capture, system-stats sampling, git/code snapshot or host metadata (command line, environment): the
command line may hold a secret, and the records hold only the masked config, the metrics and the summary.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.logging.trackers import numeric


class WandbRun:
    def __init__(self, spec, run_dir: Path, project: str, name: str, config: dict, resume_id: str | None):
        import wandb

        settings = wandb.Settings(console="off", silent=True, disable_git=True, disable_code=True, save_code=False,
                                  x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
                                  x_save_requirements=False)
        self.run = wandb.init(project=project, entity=spec.entity, name=name, tags=list(spec.tags) or None,
                              config=config, dir=str(run_dir), mode=spec.mode, id=resume_id,
                              resume="allow" if resume_id else None, settings=settings, reinit="create_new")
        self.run_id = self.run.id

    def where(self) -> dict:
        return {"dir": self.run.dir and str(Path(self.run.dir).parent), "mode": self.run.settings.mode}

    def log(self, row: dict) -> None:
        self.run.log(numeric(row), step=int(row["step"]))

    def finish(self, summary: dict, status: str) -> None:
        self.run.summary.update({**summary, "status": status})
        self.run.finish(exit_code=0 if status == "completed" else 1)
