"""Pictures of runs (matplotlib, headless Agg; imported only when a picture is drawn).

`loss_png(run_dir)`: <run_dir>/plots/loss.png at the end of every run (also a failed one, from the metrics it
logged): train and eval loss against steps on the left, eval metrics (exact match, per-task losses) or else the
learning rate on the right.
`plot(dirs, out, metric)`: `tuneforge plot RUN_DIR... | SWEEP_DIR`: several runs' curves on one figure; for a
sweep directory (sweep_summary.json) also the sweep's metric against each swept key's values (numbers on a
number line, log-scaled when they span a decade or more; anything else as categories).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tuneforge.errors import InputError

SIZE = (12.0, 4.5)  # inches per row of panels, at DPI: loss.png is 1200 x 450 pixels
DPI = 100
SUMMARY = "sweep_summary.json"
_NOT_METRICS = ("eval_loss", "eval_ppl", "eval_n")


def read(run_dir: Path) -> list[dict]:
    """The rows of <run_dir>/metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], _num(r.get(key))) for r in rows]
    pts = [(s, v) for s, v in pts if v is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def eval_metrics(rows: list[dict]) -> list[str]:
    """Keys of eval rows worth a curve beside the loss (exact match, per-task losses ...)."""
    keys = {k for r in rows if "eval_loss" in r for k in r if k != "step" and k not in _NOT_METRICS}
    return sorted(k for k in keys if series(rows, k)[0])


def _figure(rows: int, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE[0], SIZE[1] * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, out: Path, tight: bool = True) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    else:  # fixed margins: a third cheaper than tight_layout's extra rendering pass (every run pays it)
        fig.subplots_adjust(left=0.07, right=0.985, bottom=0.11, top=0.88, wspace=0.18)
    fig.savefig(out, dpi=DPI)  # no bbox_inches="tight": the size stays SIZE x DPI
    return out


def _steps_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _losses(ax, rows: list[dict], label: str = "", color=None) -> None:
    prefix = f"{label} " if label else ""
    ax.plot(*series(rows, "loss"), color=color, lw=1.2, label=f"{prefix}train loss")
    steps, vals = series(rows, "eval_loss")
    if steps:
        ax.plot(steps, vals, "o--", color=color, ms=4, label=f"{prefix}eval loss")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    _steps_axis(ax)


def loss_png(run_dir: Path) -> Path | None:
    """Draw <run_dir>/plots/loss.png from metrics.jsonl; None when no metrics were logged."""
    rows = read(run_dir)
    if not rows:
        return None
    fig, axes = _figure(1, 2)
    left, right = axes[0]
    _losses(left, rows)
    left.legend(fontsize=8)
    extra = eval_metrics(rows)
    for key in extra:
        right.plot(*series(rows, key), "o-", ms=4, label=key)
    if extra:
        right.set(xlabel="step", title="eval metrics")
        right.legend(fontsize=8)
    else:
        right.plot(*series(rows, "lr"), lw=1.2)
        right.set(xlabel="step", ylabel="learning rate", title="learning rate (no eval metrics)")
    _steps_axis(right)
    right.set_xlim(left.get_xlim())  # both panels on the run's steps (one eval point would centre on itself)
    fig.suptitle(Path(run_dir).name, fontsize=9)
    return _save(fig, Path(run_dir) / "plots" / "loss.png", tight=False)


# ------------------------------------------------------------------------------------------- tuneforge plot
def _sweep_jobs(sweep: Path) -> list[dict]:
    jobs = json.loads((sweep / SUMMARY).read_text())
    for job in jobs:
        path = Path(job["run_dir"])
        job["path"] = path if path.is_absolute() else sweep / path
        job["values"] = dict(o.split("=", 1) for o in job.get("overrides", []) if "=" in o)
        job["values"].update({k: str(v) for k, v in (job.get("params") or {}).items()})
    swept = _swept(jobs)
    for job in jobs:
        job["label"] = " ".join(f"{k}={job['values'].get(k)}" for k in swept) or job["path"].name
    return jobs


def _swept(jobs: list[dict]) -> list[str]:
    return sorted({k for j in jobs for k in j["values"] if len({str(o["values"].get(k)) for o in jobs}) > 1})


def final_metric(job: dict, rows: list[dict], metric: str) -> float | None:
    """The job's final `metric`: its last eval row's, else its summary's (final_train_loss ...)."""
    steps, vals = series(rows, metric)
    if vals:
        return vals[-1]
    return _num((job.get("eval") or {}).get(metric, job.get(metric)))


def _values_panel(ax, jobs: list[dict], key: str, metric: str) -> None:
    pts = [(j["values"].get(key), j["final"]) for j in jobs if j["final"] is not None]
    try:
        xs = [float(x) for x, _ in pts]
    except (TypeError, ValueError):
        xs = None
    if xs is not None and pts:
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot([xs[i] for i in order], [pts[i][1] for i in order], "o-")
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ticks = sorted({x: str(v) for x, (v, _) in zip(xs, pts)}.items())
        if len(ticks) <= 8:  # the swept values themselves, as the user wrote them
            ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks], fontsize=8)
            ax.minorticks_off()
    else:
        cats = sorted({str(x) for x, _ in pts})
        ax.scatter([cats.index(str(x)) for x, _ in pts], [y for _, y in pts])
        ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} by {key}")
    ax.grid(alpha=0.3)


def plot(paths: list[Path], out: Path | None = None, metric: str = "eval_loss") -> Path:
    """Runs' curves on one figure (train/eval loss; `metric` against steps); for a sweep directory also the
    final `metric` against each swept key. Returns the PNG written."""
    problems = [f"{p}: not a run directory (no metrics.jsonl) nor a sweep directory (no {SUMMARY})"
                for p in paths if not ((p / "metrics.jsonl").is_file() or (p / SUMMARY).is_file())]
    sweeps = [p for p in paths if (p / SUMMARY).is_file()]
    if sweeps and len(paths) > 1:
        problems.append("give one sweep directory, or run directories (a sweep's jobs are its run directories)")
    if not paths:
        problems.append("usage: tuneforge plot RUN_DIR [RUN_DIR ...] | SWEEP_DIR [out=FILE.png] [metric=eval_loss]")
    if problems:
        raise InputError(problems)
    if sweeps:
        jobs = _sweep_jobs(sweeps[0])
    else:
        jobs = [{"path": p, "label": p.name, "values": {}} for p in paths]
    for job in jobs:
        job["rows"] = read(job["path"])
        job["final"] = final_metric(job, job["rows"], metric)
    swept = _swept(jobs) if sweeps else []
    fig, axes = _figure(2 if swept else 1, max(2, len(swept)))
    for i, job in enumerate(jobs):
        color = f"C{i % 10}"
        _losses(axes[0][0], job["rows"], job["label"], color)
        axes[0][1].plot(*series(job["rows"], metric), "o-", color=color, ms=4, label=job["label"])
    axes[0][0].legend(fontsize=7)
    axes[0][1].set(xlabel="step", ylabel=metric, title=f"{metric} (eval)")
    _steps_axis(axes[0][1])
    for ax in axes[0][2:]:
        ax.set_visible(False)
    for ax, key in zip(axes[1] if swept else [], swept):
        _values_panel(ax, jobs, key, metric)
    for ax in (axes[1][len(swept):] if swept else []):
        ax.set_visible(False)
    default = (sweeps[0] / "plots" / "sweep.png") if sweeps else (
        paths[0] / "plots" / "runs.png" if len(paths) == 1 else Path("tuneforge-plot.png"))
    return _save(fig, Path(out) if out else default)
