"""An MLflow run, through `MlflowClient` (no global active run, so in-process runs do not share state).

Default store: the file store <run_dir>/mlruns (`mlflow ui --backend-store-uri <run_dir>/mlruns`); MLflow 3 keeps
that backend in maintenance mode behind MLFLOW_ALLOW_FILE_STORE, which is set here for file stores unless the
user set it. logger.tracking_uri names a shared store or a server (http://..., databricks, sqlite:///... with the
full `mlflow` package). Params are the flattened config (masked); config.json and summary.json are artifacts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tuneforge.logging.trackers import numeric

_BATCH = 100  # MLflow's log_batch takes at most 100 params / 1000 metrics per call
_PARAM_CHARS = 6000


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:_PARAM_CHARS]
    return out


class MlflowRun:
    def __init__(self, spec, run_dir: Path, project: str, name: str, config: dict, resume_id: str | None):
        self.uri = spec.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.client = MlflowClient(self.uri)
        if resume_id is not None and self._in_store(resume_id):
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
        else:  # a new run (also when the saved run is not in this store: logger.tracking_uri changed)
            exp = self.client.get_experiment_by_name(project)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(project)
            tags = {"tuneforge.run_dir": str(run_dir), **{t: "" for t in spec.tags}}
            self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            params = [Param(k, v) for k, v in flatten(config).items()]
            for i in range(0, len(params), _BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + _BATCH], tags=[RunTag("status", "running")])
        self.client.log_dict(self.run_id, config, "config.json")

    def _in_store(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    def where(self) -> dict:
        return {"tracking_uri": self.uri}

    def log(self, row: dict) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, now, int(row["step"]))
                                                    for k, v in numeric(row).items()])

    def finish(self, summary: dict, status: str) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_tag(self.run_id, "status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else
                                   "KILLED" if status in ("preempted", "interrupted") else "FAILED")
