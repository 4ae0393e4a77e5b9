"""The end of a search: a leaderboard ranked by the metric (reads at 80 columns: one column per searched key,
named by its last part; each trial by its run directory relative to the sweep directory, trial_<n>; a retried
trial's run is the interrupted one's directory) and <sweep_dir>/sweep_summary.json
with every trial. The JSON rows carry the basic sweeper's keys too (job, overrides, status, exit_code, eval,
final_train_loss, run_dir, error), so whatever reads a sweep's summary reads a search's."""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.table import Table

from tuneforge.logging import secrets
from tuneforge.runner.optuna_sweep.space import OptunaSpec, assignment
from tuneforge.runner.optuna_sweep.study import RUN_DIR, retried


def rows(study, spec: OptunaSpec, root: Path, outcomes: dict[int, dict]) -> list[dict]:
    """One row per trial of the study, in trial order. `outcomes`: trial number -> what this invocation saw
    (exit code, error); earlier invocations' trials are read back from their run directories."""
    again = retried(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("WAITING", "RUNNING"):
            continue
        run_dir = t.user_attrs.get(RUN_DIR) or str(root / f"trial_{t.number}")
        summary = read_summary(Path(run_dir)) if t.number not in again else {}
        state = "retried" if t.number in again else {"COMPLETE": "complete", "PRUNED": "pruned"}.get(t.state.name, "failed")
        seen = outcomes.get(t.number, {})
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        out.append({"trial": t.number, "job": t.number, "state": state, "status": state, "metric": spec.metric,
                    "value": value, "params": dict(t.params), "overrides": assignment(t.params),
                    "steps": summary.get("steps"), "exit_code": seen.get("exit_code", t.user_attrs.get("exit_code")),
                    "final_train_loss": summary.get("final_train_loss"), "eval": summary.get("eval", {}),
                    "run_dir": run_dir, "error": seen.get("error") or t.user_attrs.get("error") or summary.get("error")})
    return out


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def ranked(trials: list[dict], maximize: bool) -> list[dict]:
    """Complete trials best first, then pruned ones (by their last reported value), then failed and retried."""
    order = {"complete": 0, "pruned": 1, "failed": 2, "retried": 3}

    def key(r):
        v = r["value"]
        return order[r["state"]], v is None, (-v if maximize else v) if v is not None else 0.0

    return sorted(trials, key=key)


def write_summary(root: Path, trials: list[dict]) -> Path:
    path = root / "sweep_summary.json"
    path.write_text(json.dumps(secrets.redact_json(trials), indent=2))
    return path


def _name(key: str, keys: list[str]) -> str:
    short = key.rsplit(".", 1)[-1]
    return short if sum(k.rsplit(".", 1)[-1] == short for k in keys) == 1 else key


def _val(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def leaderboard(trials: list[dict], spec: OptunaSpec, root: Path) -> Table:
    keys = list(dict.fromkeys(k for r in trials for k in r["params"]))
    best = "max" if spec.maximize else "min"
    table = Table(title=f"optuna search: {spec.metric} ({best}imize), {root}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("#", "run dir", "state", spec.metric):
        table.add_column(col, justify="right" if col == "#" else "left", no_wrap=True)
    for k in keys:  # searched values may wrap; the columns around them do not
        table.add_column(_name(k, keys), overflow="fold")
    table.add_column("steps", justify="right", no_wrap=True)
    styles = {"complete": "green", "pruned": "yellow", "failed": "red", "retried": "dim"}
    for i, r in enumerate(ranked(trials, spec.maximize), 1):
        rel = Path(r["run_dir"]).relative_to(root) if Path(r["run_dir"]).is_relative_to(root) else r["run_dir"]
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        table.add_row(str(i) if r["state"] == "complete" else "", str(rel), f"[{styles[r['state']]}]{r['state']}[/]",
                      value, *(_val(r["params"].get(k)) for k in keys), _val(r["steps"]))
    return table
