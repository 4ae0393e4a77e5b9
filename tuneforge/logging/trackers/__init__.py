"""Experiment trackers (Weights & Biases, MLflow) fed beside metrics.jsonl: rank 0 only.

`open_tracker(spec, run_dir, config)` starts the tracker run named by `spec.tracker` (the logger spec), logs the
resolved config (already masked by secrets.absorb, masked again here), and records the tracker's run id in
<run_dir>/tracker.json, so a resumed run (same run directory) continues the same tracker run. Each tracker
module wraps its library: `log(row)` per metrics row, `finish(summary, status)` at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tuneforge.logging import secrets

STATE = "tracker.json"


def open_tracker(spec, run_dir: Path, config, recipe: str):
    """The tracker run of this run directory (None for logger.tracker=none); `config`: the run's resolved config."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    if spec.tracker == "none":
        return None
    if spec.tracker == "wandb":
        from tuneforge.logging.trackers.wandb_run import WandbRun as kind
    else:
        from tuneforge.logging.trackers.mlflow_run import MlflowRun as kind
    state_file = Path(run_dir) / STATE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    previous = state.get("run_id") if state.get("tracker") == spec.tracker else None
    run = kind(spec, Path(run_dir), project=spec.project or recipe,
               name=spec.run_name or f"{recipe}/{Path(run_dir).name}", config=secrets.redact_json(config),
               resume_id=previous)
    state_file.write_text(json.dumps({"tracker": spec.tracker, "run_id": run.run_id, **run.where()}, indent=2))
    return run


_NOT_PLOTTED = ("step", "samples")  # samples: a checksum of the step's batch (for resume checks), not a quantity


def numeric(row: dict) -> dict:
    """The row's numbers, without its step (what a tracker plots)."""
    return {k: float(v) for k, v in row.items()
            if k not in _NOT_PLOTTED and isinstance(v, (int, float)) and not isinstance(v, bool)}
