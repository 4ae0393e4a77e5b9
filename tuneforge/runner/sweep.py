"""`tuneforge train -m ...`: a Hydra multirun sweep.

Every job's config is composed and validated first; if any job is invalid, all problems of all jobs are
reported and nothing starts. Jobs then run one after another, each in its own processes (a crash cannot take
the sweep down) with its output in <job_dir>/train.log. A failed job does not stop the others; the sweep
ends with a table, <sweep_dir>/sweep_summary.json, and exit code 1 if any job failed.

Sweeps keep every run: a pre-empted job (SIGTERM/SIGUSR1: it commits a checkpoint) stops the sweep with exit
code 3; running the same sweep again with trainer.resume=auto finds its directory (sweep.json lists the jobs),
skips finished jobs and resumes the others in their own directories.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.config.compose import expand_sweep
from tuneforge.config.run import Run
from tuneforge.distributed import launch
from tuneforge.errors import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, InputError
from tuneforge.logging import secrets
from tuneforge.logging.console import fmt_duration
from tuneforge.runner.start import preflight, prepare_run_dir, start


def _slug(overrides: list[str]) -> str:
    s = "_".join(o.split("=", 1)[-1] if "=" in o else o for o in _identity(overrides))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", s)[:60].strip("-") or "job"


def run_sweep(overrides: list[str]) -> int:
    console = Console(highlight=False)
    jobs = expand_sweep(overrides)
    runs, problems = [], []
    for i, job in enumerate(jobs):
        try:
            run = Run.compose(job)
            if run.specs["merge"].name != "none":
                raise InputError([f"merge={run.specs['merge'].name}: a sweep does not merge after training; merge "
                                  "its runs with `tuneforge merge DIR DIR ... out=DIR`"])
            preflight(run)
            runs.append(run)
        except InputError as e:
            problems += [f"job {i} ({' '.join(job)}): {p}" for p in e.problems]
    if problems:
        raise InputError(problems, title=f"sweep of {len(jobs)} jobs not started")
    resume = runs[0].specs["trainer"].resume == "auto"
    root = sweep_dir(runs[0].specs["trainer"].output_dir, [_identity(j) for j in jobs], resume)
    console.print(f"[bold]sweep[/]: {len(jobs)} jobs -> {root}")
    results, stopped = [], False
    for i, (job, run) in enumerate(zip(jobs, runs)):
        job_dir = root / f"{i}_{_slug(job)}"
        console.print(f"[{i + 1}/{len(jobs)}] {' '.join(job) or '(defaults)'} ... ", end="")
        if resume and _read_summary(job_dir).get("status") == "completed":
            console.print("[green]completed[/] (already finished: skipped)")
            results.append(_result(i, job, job_dir, 0))
            continue
        t0 = time.time()
        prepare_run_dir(run, job_dir)
        code = start(run, log=job_dir / "train.log")
        result = _result(i, job, job_dir, code)
        console.print(("[green]" if code == 0 else "[red]") + f"{result['status']}[/] ({fmt_duration(time.time() - t0)})"
                      + ("" if code == 0 else f": see {job_dir / 'train.log'}"))
        results.append(result)
        stopped = code == EXIT_PREEMPTED or bool(launch.STOP_SIGNALS)  # a signal that came as a job ended, too
        if stopped:
            console.print("[yellow]sweep pre-empted: run the same command with trainer.resume=auto to continue[/]")
            break
    (root / "sweep_summary.json").write_text(json.dumps(secrets.redact_json(results), indent=2))
    console.print(_table(results))
    console.print(f"sweep summary: {root / 'sweep_summary.json'}")
    if stopped:
        return EXIT_PREEMPTED
    return EXIT_OK if all(r["exit_code"] == 0 for r in results) else EXIT_FAILED


def _identity(job: list[str]) -> list[str]:
    """A job's overrides without the ones that only say how to run it (resume, output dir)."""
    return [o for o in job if not o.startswith(("trainer.resume=", "trainer.output_dir="))]


def sweep_dir(output_dir: str | None, identities: list[list[str]], resume: bool) -> Path:
    """The sweep's directory: trainer.output_dir if given; with resume=auto the newest earlier sweep of exactly
    these jobs; else a new outputs/multirun/<timestamp>. sweep.json records the jobs."""
    root = Path(output_dir) if output_dir else None
    if root is None and resume:
        for old in sorted(Path("outputs/multirun").glob("*/sweep.json"), reverse=True):
            if json.loads(old.read_text()).get("jobs") == identities:
                root = old.parent
                break
    if root is None:
        root = Path("outputs") / "multirun" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "sweep.json").is_file():
        (root / "sweep.json").write_text(json.dumps(secrets.redact_json({"jobs": identities}), indent=1))
    return root


def _result(i: int, job: list[str], job_dir: Path, code: int) -> dict:
    summary = _read_summary(job_dir)
    status = summary.get("status", "failed")
    if code != 0 and status == "completed":
        status = "failed"
    return {"job": i, "overrides": job, "status": status, "exit_code": code,
            "final_train_loss": summary.get("final_train_loss"), "eval": summary.get("eval", {}),
            "harness": summary.get("harness", {}),
            "run_dir": str(job_dir), "error": summary.get("error")}


def _read_summary(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:.4f}"


def _table(results: list[dict]) -> Table:
    table = Table(title="sweep")
    for col in ("#", "overrides", "status", "train loss", "eval loss", "exact match", "run dir"):
        table.add_column(col)
    for r in results:
        style = "green" if r["exit_code"] == 0 else "red"
        table.add_row(str(r["job"]), " ".join(r["overrides"]), f"[{style}]{r['status']}[/]", _fmt(r["final_train_loss"]),
                      _fmt(r["eval"].get("eval_loss")), _fmt(r["eval"].get("exact_match"), pct=True), r["run_dir"])
    return table
