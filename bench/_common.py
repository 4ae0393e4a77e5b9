"""Helpers shared by the benchmarks: run the real CLI, read a run directory, print a table."""

from __future__ import annotations

import atexit
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table


def cli(*args: str) -> None:
    """Run `tuneforge <args>` (prune, export, merge ...); exit with its output if it fails."""
    proc = subprocess.run([sys.executable, "-m", "tuneforge", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tuneforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def train(*overrides: str, cwd: Path | None = None) -> Path:
    """Run `tuneforge train` and return its run directory. Without `cwd` the run goes to a temporary folder that is
    removed when the benchmark exits (~0.2-2 GB of checkpoints per run; benchmarks read their numbers in-process)."""
    if cwd is None:
        cwd = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
        atexit.register(shutil.rmtree, cwd, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "tuneforge", "train", *overrides, "logger.progress=false"],
                          cwd=cwd, capture_output=True, text=True)
    run_dir = next((ln[len("run dir: "):].strip() for ln in proc.stdout.splitlines() if ln.startswith("run dir: ")), None)
    if proc.returncode != 0 or run_dir is None:
        sys.exit(f"tuneforge train {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return Path(run_dir)


def read(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def machine() -> str:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import os

    from tuneforge.hardware import cpu_flags

    flags = cpu_flags() or set()
    wide = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags] or ["no AVX-512"]
    return f"{cpu} ({', '.join(wide)}), {os.cpu_count()} cores, Python {platform.python_version()}"


def show(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console(width=200).print(table)
    print(f"machine: {machine()}")
