"""The search loop: check the whole space, then ask the study for a trial, run it as a tuneforge run in its own
directory (<sweep_dir>/trial_<n>), tell the study how it ended; at the end a leaderboard and
sweep_summary.json.

Before the study starts, a trial is composed at every corner of the space (each numeric parameter at its low and
high bound, each choice of each categorical one, the others at their first corner) and the first is pre-flighted
(data, model files): every problem of every corner is reported in one InputError and nothing runs. Each trial's
own composition is validated again before it runs; a trial that does not compose fails in the study (the search
goes on).

A trial ends complete (its final eval's metric is its value), pruned (its pruner stopped it on an intermediate
eval: exit code 5, status "pruned" in its summary), or failed (a failed trial does not stop the others; the
search exits 1 at the end). A pre-empted trial (SIGTERM/SIGUSR1, exit 3) stops the search with exit 3 and is
retried when the command is run again with trainer.resume=auto (study.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from tuneforge.config.run import Run
from tuneforge.distributed import launch
from tuneforge.errors import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_PRUNED, InputError
from tuneforge.logging.console import fmt_duration
from tuneforge.runner import trial
from tuneforge.runner.optuna_sweep import board, space, study
from tuneforge.runner.optuna_sweep.space import Param, Search, assignment, parse, suggest
from tuneforge.runner.start import preflight, prepare_run_dir, start
from tuneforge.runner.sweep import sweep_dir

PRUNER_KNOBS = ("pruner", "pruner_startup_trials", "pruner_warmup_steps")


def run_search(overrides: list[str]) -> int:
    console = Console(highlight=False)
    search = parse(overrides)
    spec = search.spec
    base = validate(search, console)
    t = base.specs["trainer"]
    resume = t.resume == "auto"
    root = sweep_dir(t.output_dir, [search.identity], resume)
    url = study.storage_url(spec, root)
    _check_existing(url, spec, resume, root)
    st = study.open_study(spec, url)
    for n in study.recover(st):
        console.print(f"[yellow]trial {n} was interrupted: it runs again, resuming its checkpoint[/]")
    done = study.ended(st)
    console.print(f"[bold]optuna search[/]: {spec.n_trials} trials ({done} done), {spec.metric} "
                  f"{'max' if spec.maximize else 'min'}imized, sampler={spec.sampler} pruner={spec.pruner} -> {root}")
    outcomes, stopped = {}, False
    while study.ended(st) < spec.n_trials and not stopped:
        tr = st.ask()
        params = {p.key: suggest(tr, p) for p in search.params}
        outcome = _run_trial(st, tr, params, search, root, url, console)
        outcomes[tr.number] = outcome
        stopped = outcome.get("interrupted", False)
        board.write_summary(root, board.rows(st, spec, root, outcomes))
    trials = board.rows(st, spec, root, outcomes)
    path = board.write_summary(root, trials)
    console.print(board.leaderboard(trials, spec, root))
    console.print(f"sweep summary: {path}\nstudy: {spec.study_name} in {trial.shown_url(url)}")
    if stopped:
        console.print("[yellow]search pre-empted: run the same command with trainer.resume=auto to continue[/]")
        return EXIT_PREEMPTED
    return EXIT_FAILED if any(r["state"] == "failed" for r in trials) else EXIT_OK


def _run_trial(st, tr, params: dict, search: Search, root: Path, url: str, console) -> dict:
    from optuna.trial import TrialState

    spec = search.spec
    retried_from = tr.user_attrs.get(study.RETRY_OF)
    run_dir = Path(tr.user_attrs.get(study.RUN_DIR) or root / f"trial_{tr.number}")
    tr.set_user_attr(study.RUN_DIR, str(run_dir))
    label = " ".join(assignment(params))
    console.print(f"trial {tr.number}: {label}" + ("" if retried_from is None else f" (retry of {retried_from})")
                  + " ... ", end="")
    job = [*search.fixed, *assignment(params), *([] if retried_from is None else ["trainer.resume=auto"])]
    t0 = time.time()
    try:
        run = Run.compose(job)
        prepare_run_dir(run, run_dir)
    except InputError as e:
        console.print(f"[red]failed[/]: {e}")
        tr.set_user_attr("error", str(e))
        st.tell(tr, state=TrialState.FAIL)
        return {"exit_code": e.exit_code, "error": str(e)}
    knobs = {k: v for k, v in asdict(spec).items() if k in PRUNER_KNOBS}
    trial.write(run_dir, url, spec.study_name, tr._trial_id, tr.number, spec.metric, knobs)  # noqa: SLF001 - the
    # trial's storage id: what optuna.trial.Trial(study, id) opens in the run's process
    code = start(run, log=None if spec.in_process else run_dir / "train.log", in_process=spec.in_process)
    summary = board.read_summary(run_dir)
    took = fmt_duration(time.time() - t0)
    tr.set_user_attr("exit_code", code)
    value = space.metric_value(summary, spec.metric)
    if code == EXIT_PRUNED:
        console.print(f"[yellow]pruned[/] at step {summary.get('steps')} ({took})")
        st.tell(tr, state=TrialState.PRUNED)
        return {"exit_code": code}
    if code == EXIT_PREEMPTED or summary.get("status") in ("preempted", "interrupted") or launch.STOP_SIGNALS:
        console.print(f"[yellow]interrupted[/] ({took})")
        st.tell(tr, state=TrialState.FAIL)
        study.retry(st, tr.number, params, str(run_dir))
        return {"exit_code": code, "interrupted": True}
    if code == EXIT_OK and value is not None:
        console.print(f"[green]complete[/] {spec.metric} {value:.4f} ({took})")
        st.tell(tr, float(value))
        return {"exit_code": code}
    error = summary.get("error") or (f"the run's eval has no {spec.metric}" if code == EXIT_OK else f"exit code {code}")
    tr.set_user_attr("error", error)
    where = "" if spec.in_process else f": see {run_dir / 'train.log'}"
    console.print(f"[red]failed[/] ({took}){where}")
    st.tell(tr, state=TrialState.FAIL)
    return {"exit_code": code, "error": error}


def corners(params: list[Param]) -> list[dict]:
    """Every parameter at its first corner, then each other corner of each parameter in turn."""
    first = {p.key: p.corners()[0] for p in params}
    out = [first]
    for p in params:
        out += [{**first, p.key: c} for c in p.corners()[1:]]
    return out


def validate(search: Search, console) -> Run:
    """Compose a trial at every corner of the space; pre-flight the first. One InputError lists every problem."""
    found: dict[str, list[dict]] = {}
    runs = []
    points = corners(search.params)
    for point in points:
        try:
            runs.append(Run.compose([*search.fixed, *assignment(point)]))
        except InputError as e:
            for p in e.problems:
                found.setdefault(p, []).append(point)
    problems = [p if len(at) == len(points) else f"trial at {' '.join(assignment(at[0]))}: {p}"
                for p, at in found.items()]
    if runs:
        run = runs[0]
        if run.specs["merge"].name != "none":
            problems.append(f"merge={run.specs['merge'].name}: a search does not merge after training")
        problems += space.metric_problems(search.spec.metric, run.specs)
        try:
            preflight(run)
        except InputError as e:
            problems += e.problems
        if not run.specs["trainer"].eval_every and search.spec.pruner != "none":
            console.print("[yellow]note:[/] trainer.eval_every=0: a trial is evaluated only at its end, so nothing "
                          "is pruned; set trainer.eval_every=N to prune on intermediate evals")
    if problems:
        raise InputError(problems, title=f"optuna search not started ({len(points)} trial configurations checked)")
    return runs[0]


def _check_existing(url: str, spec, resume: bool, root: Path) -> None:
    direction = study.existing_direction(url, spec.study_name)
    if direction is None:
        return
    if not resume:
        raise InputError([f"{root} already holds study '{spec.study_name}': continue it with trainer.resume=auto, "
                          "or choose another trainer.output_dir / hydra.sweeper.study_name"])
    want = "maximize" if spec.maximize else "minimize"
    if direction != want:
        raise InputError([f"study '{spec.study_name}' in {trial.shown_url(url)} was made to {direction}, this search would {want}: "
                          "keep hydra.sweeper.direction/metric, or start another study"])
