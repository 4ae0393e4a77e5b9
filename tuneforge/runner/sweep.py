"""`tuneforge train -m ...`: a Hydra multirun sweep.

Every job's config is composed and validated first; if any job is invalid, all problems of all jobs are
reported and nothing starts. Jobs then run one after another, each in its own processes (a crash cannot take
the sweep down) with its output in <job_dir>/train.log -- or, with hydra/launcher=<plugin> (submitit_local,
submitit_slurm, ...), through that Hydra launcher (runner/hydra_launch.py). A failed job does not stop the
others; the sweep ends with a table, <sweep_dir>/sweep_summary.json, and exit code 1 if any job failed.

The sweep directory is hydra.sweep.dir (or trainer.output_dir; both given must agree), else
outputs/multirun/<time>; job i's directory is hydra.sweep.subdir under it (default: <i>_<its swept values>).
hydra/sweeper=NAME picks the sweeper from SWEEPERS (basic: the cartesian product of the comma-separated values).

Sweeps keep every run: a pre-empted job (SIGTERM/SIGUSR1: it commits a checkpoint) stops the sweep with exit
code 3; running the same sweep again with trainer.resume=auto finds its directory (sweep.json lists the jobs),
skips finished jobs and resumes the others in their own directories.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.config import hydra_node
from tuneforge.config.compose import expand_sweep
from tuneforge.config.hydra_node import identity as _identity
from tuneforge.config.run import Run
from tuneforge.distributed import launch
from tuneforge.errors import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, InputError, did_you_mean
from tuneforge.logging import secrets
from tuneforge.logging.console import fmt_duration
from tuneforge.runner.start import preflight, prepare_run_dir, start

# hydra/sweeper=NAME -> the function running the sweep ("module:function", imported when chosen)
SWEEPERS = {"basic": "tuneforge.runner.sweep:run_sweep", "optuna": "tuneforge.runner.optuna_sweep:run"}


def main(overrides: list[str]) -> int:
    """`tuneforge train -m`: the sweeper of hydra/sweeper (default basic) runs the sweep with `overrides`."""
    import importlib

    args, problems = hydra_node.read(hydra_node.split(overrides)[0], multirun=True)
    if args.sweeper not in SWEEPERS:
        problems.append(f"unknown sweeper hydra/sweeper={args.sweeper}{did_you_mean(args.sweeper, SWEEPERS)}; "
                        f"sweepers: {', '.join(SWEEPERS)}")
    elif args.sweeper == hydra_node.BASIC and any(o.startswith("hydra.sweeper.") for o in args.sweeper_overrides):
        problems.append("hydra.sweeper.<knob>: the basic sweeper has no knobs; give the values on the command line "
                        "(key=a,b runs every combination) or choose another sweeper (hydra/sweeper=optuna)")
    elif args.sweeper != hydra_node.BASIC:
        overrides = _for_searcher(overrides, args, problems)
    if problems:
        raise InputError(problems, title="sweep not started")
    module, _, name = SWEEPERS[args.sweeper].partition(":")
    try:
        sweeper = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InputError([f"hydra/sweeper={args.sweeper} is not available in this install ({e})"]) from None
    return sweeper(overrides)


def _for_searcher(overrides: list[str], args, problems: list[str]) -> list[str]:
    """The overrides for a sweeper that runs its trials itself (optuna: <sweep dir>/trial_<n>, one after another):
    hydra.sweep.dir becomes trainer.output_dir; the launcher and job-directory keys do not apply to it."""
    if args.launcher != hydra_node.BASIC or any(o.startswith("hydra.launcher.") for o in overrides):
        problems.append(f"hydra/launcher: hydra/sweeper={args.sweeper} runs its trials itself, on this machine; "
                        "launchers run the basic sweeper's jobs")
    for key in sorted(args.given & {"hydra.sweep.subdir", "hydra.job.name"}):
        problems.append(f"{key}: hydra/sweeper={args.sweeper} names its trials' directories itself (trial_<n>)")
    dirs = [o.split("=", 1)[1] for o in overrides if o.startswith(("hydra.sweep.dir=", "trainer.output_dir="))]
    if len({str(Path(d).absolute()) for d in dirs}) > 1:
        problems.append(f"hydra.sweep.dir and trainer.output_dir name two sweep directories ({', '.join(dirs)}): "
                        "give one")
    return [o.replace("hydra.sweep.dir=", "trainer.output_dir=", 1) if o.startswith("hydra.sweep.dir=") else o
            for o in overrides if not o.startswith("hydra/launcher=")]


def _slug(overrides: list[str]) -> str:
    return hydra_node.slug(overrides)


def _validate(jobs: list[list[str]], searchpath: list[str]) -> list[Run]:
    """Every job composed, checked and pre-flighted; all problems of all jobs in one InputError."""
    runs, problems = [], []
    for i, job in enumerate(jobs):
        try:
            run = Run.compose([*searchpath, *job])
            if run.specs["merge"].name != "none":
                raise InputError([f"merge={run.specs['merge'].name}: a sweep does not merge after training; merge "
                                  "its runs with `tuneforge merge DIR DIR ... out=DIR`"])
            preflight(run)
            runs.append(run)
        except InputError as e:
            problems += [f"job {i} ({' '.join(job)}): {p}" for p in e.problems]
    if problems:
        raise InputError(problems, title=f"sweep of {len(jobs)} jobs not started")
    return runs


def run_sweep(overrides: list[str]) -> int:
    """The basic sweeper: every combination of the comma-separated values, run by hydra/launcher (basic: here,
    one job after another)."""
    hydra_overrides, rest = hydra_node.split(overrides)
    args, problems = hydra_node.read([o for o in hydra_overrides if not o.startswith("hydra/sweeper=")], True)
    if problems:
        raise InputError(problems, title="sweep not started")
    jobs = expand_sweep(rest)
    runs = _validate(jobs, [o for o in hydra_overrides if o.startswith("hydra.searchpath")])
    runs = [_scrubbed(run) for run in runs]  # before job dirs are named, and before a launcher pickles the runs
    recipes = {run.recipe for run in runs}
    master, loader = hydra_node.compose_node(args, recipes.pop() if len(recipes) == 1 else "tuneforge")
    subdirs = [hydra_node.job_dir(master, job, i).name for i, job in enumerate(jobs)]
    if len(set(subdirs)) < len(subdirs):
        raise InputError([f"hydra.sweep.subdir={master.hydra.sweep.subdir} gives several jobs one directory ("
                          f"{next(d for d in subdirs if subdirs.count(d) > 1)}): include ${{hydra.job.num}}"],
                         title="sweep not started")
    resume = runs[0].specs["trainer"].resume == "auto"
    root = sweep_dir(_output_dir(args, master, runs[0]), [_identity(j) for j in jobs], resume,
                     default=Path(str(master.hydra.sweep.dir)))
    master.hydra.sweep.dir = str(root)
    dirs = [hydra_node.job_dir(master, job, i) for i, job in enumerate(jobs)]
    Console(highlight=False, soft_wrap=True).print(f"[bold]sweep[/]: {len(jobs)} jobs -> {root}"
                                   + ("" if args.launcher == hydra_node.BASIC else f" (hydra/launcher={args.launcher})"))
    if args.launcher == hydra_node.BASIC:
        results, stopped = _run_here(jobs, runs, dirs, resume)
    else:
        results, stopped = _run_plugin(master, loader, jobs, runs, dirs, resume)
    return _finish(root, results, stopped)


def _scrubbed(run: Run) -> Run:
    """The run with its secrets moved to the environment (the jobs inherit it) and masked in its config and specs."""
    secrets.absorb(run.cfg)
    return Run.of(run.cfg)


def _output_dir(args, master, run: Run) -> str | None:
    """hydra.sweep.dir or trainer.output_dir (None: neither); both given must name one directory."""
    given = run.specs["trainer"].output_dir
    if "hydra.sweep.dir" not in args.given:
        return given
    hydra_dir = str(master.hydra.sweep.dir)
    if given and Path(given).absolute() != Path(hydra_dir).absolute():
        raise InputError([f"hydra.sweep.dir={hydra_dir} and trainer.output_dir={given} name two sweep directories: "
                          "give one"], title="sweep not started")
    return hydra_dir


def _skip(resume: bool, job_dir: Path) -> bool:
    return resume and _read_summary(job_dir).get("status") == "completed"


def _run_here(jobs, runs, dirs, resume) -> tuple[list[dict], bool]:
    """hydra/launcher=basic: the jobs one after another in this process's children."""
    console = Console(highlight=False, soft_wrap=True)
    results, stopped = [], False
    for i, (job, run, job_dir) in enumerate(zip(jobs, runs, dirs)):
        console.print(f"[{i + 1}/{len(jobs)}] {' '.join(hydra_node.redacted(job)) or '(defaults)'} ... ", end="")
        if _skip(resume, job_dir):
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
            break
    return results, stopped


def _run_plugin(master, loader, jobs, runs, dirs, resume) -> tuple[list[dict], bool]:
    """hydra/launcher=<plugin>: the unfinished jobs through Hydra's launcher (all at once where it can)."""
    from tuneforge.runner.hydra_launch import launch as plugin_launch

    console = Console(highlight=False, soft_wrap=True)
    pending = {i: (job, run) for i, (job, run, d) in enumerate(zip(jobs, runs, dirs)) if not _skip(resume, d)}
    for i, job in enumerate(jobs):
        console.print(f"[{i + 1}/{len(jobs)}] {' '.join(hydra_node.redacted(job)) or '(defaults)'} ... "
                      + ("launched" if i in pending else "[green]completed[/] (already finished: skipped)"))
    t0 = time.time()
    codes = plugin_launch(master, loader, pending) if pending else {}
    for i in pending:
        console.print(f"job {i}: " + ("[green]" if codes[i] == 0 else "[red]") + f"exit code {codes[i]}[/]"
                      + ("" if codes[i] == 0 else f": see {dirs[i] / 'train.log'}"))
    console.print(f"{len(pending)} job(s) ran in {fmt_duration(time.time() - t0)}")
    results = [_result(i, job, d, codes.get(i, 0)) for i, (job, d) in enumerate(zip(jobs, dirs))]
    return results, any(c == EXIT_PREEMPTED for c in codes.values())


def _finish(root: Path, results: list[dict], stopped: bool) -> int:
    console = Console(highlight=False, soft_wrap=True)
    if stopped:
        console.print("[yellow]sweep pre-empted: run the same command with trainer.resume=auto to continue[/]")
    (root / "sweep_summary.json").write_text(json.dumps(secrets.redact_json(results), indent=2))
    for line in _shared_lines(results):
        console.print(line)
    console.print(_table(results))
    console.print(f"run dirs: {root}/<#>_... (each job's directory is in sweep_summary.json)")
    console.print(f"sweep summary: {root / 'sweep_summary.json'}")
    if stopped:
        return EXIT_PREEMPTED
    return EXIT_OK if all(r["exit_code"] == 0 for r in results) else EXIT_FAILED


def sweep_dir(output_dir: str | None, identities: list[list[str]], resume: bool, default: Path | None = None) -> Path:
    """The sweep's directory: output_dir (hydra.sweep.dir / trainer.output_dir) if given; with resume=auto the
    newest earlier sweep of exactly these jobs; else `default` (a new outputs/multirun/<timestamp>). sweep.json
    records the jobs."""
    root = Path(output_dir) if output_dir else None
    if root is None and resume:
        for old in sorted(Path("outputs/multirun").glob("*/sweep.json"), reverse=True):
            if json.loads(old.read_text()).get("jobs") == identities:
                root = old.parent
                break
    if root is None:
        root = default or Path("outputs") / "multirun" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
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
    return {"job": i, "overrides": hydra_node.redacted(job), "status": status, "exit_code": code,
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


def _shared(results: list[dict]) -> list[str]:
    """The overrides every job has (same key, same value), in the first job's order."""
    rest = [set(r["overrides"]) for r in results[1:]]
    return [o for o in results[0]["overrides"] if all(o in r for r in rest)] if results else []


def _shared_lines(results: list[dict]) -> list[str]:
    from rich.markup import escape

    shared = _shared(results)
    return ["[bold]every job:[/] " + escape(" ".join(shared))] if shared else []


def _table(results: list[dict]) -> Table:
    """One row per job with only what varies between jobs (the shared overrides are printed above it)."""
    from rich import box

    shared = set(_shared(results))
    metrics = [k for k in ("exact_match",) if any(r["eval"].get(k) is not None for r in results)]
    table = Table(title="sweep", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)
    for col in ("#", "overrides", "status", "train loss", "eval loss", *(k.replace("_", " ") for k in metrics)):
        table.add_column(col, justify="left" if col in ("#", "overrides", "status") else "right")
    for r in results:
        style = "green" if r["exit_code"] == 0 else "red"
        varying = " ".join(o for o in r["overrides"] if o not in shared) or "-"
        table.add_row(str(r["job"]), varying, f"[{style}]{r['status']}[/]", _fmt(r["final_train_loss"]),
                      _fmt(r["eval"].get("eval_loss")), *(_fmt(r["eval"].get(k), pct=True) for k in metrics))
    return table
