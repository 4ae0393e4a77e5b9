"""What a person watching the run sees. Rank 0 only; other ranks stay quiet unless something fails.

On a terminal: a live progress bar (step, loss, lr, tokens/s, ETA). Elsewhere (logs, CI, sweep jobs): one plain
line per logged step. Everything printed is also appended to <run_dir>/train.log unless the launcher already
captures this process's output there (TUNEFORGE_OUTPUT_CAPTURED=1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tuneforge.logging import secrets


def fmt_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Console:
    def __init__(self, run_dir: Path | None, main: bool = True, progress: bool = True):
        self.main = main
        self.term = RichConsole(highlight=False, soft_wrap=True)
        self.live = progress and self.term.is_terminal and main
        self.captured = os.environ.get("TUNEFORGE_OUTPUT_CAPTURED") == "1"
        self.file = None
        if run_dir is not None and main and not self.captured:
            self.file = RichConsole(file=open(Path(run_dir) / "train.log", "a"), highlight=False, soft_wrap=True,  # noqa: SIM115
                                    force_terminal=False, no_color=True)
        self.progress: Progress | None = None
        self._task = None
        self._t0 = time.time()
        self._total = 0

    def print(self, *objs, force: bool = False, markup: bool = True) -> None:
        if not (self.main or force):
            return
        objs = tuple(secrets.redact(o) if isinstance(o, str) else o for o in objs)
        (self.progress.console if self.progress else self.term).print(*objs, markup=markup)
        if self.file:
            self.file.print(*objs, markup=markup)
            self.file.file.flush()

    def error(self, text: str) -> None:
        self.print(f"[bold red]error:[/] {escape(text)}", force=True)

    def log_only(self, text: str) -> None:
        """Into <run_dir>/train.log but not onto a person's terminal (e.g. the traceback behind a clear error)."""
        text = secrets.redact(text)
        if self.captured:
            self.term.print(text, markup=False)
        elif self.file:
            self.file.print(text, markup=False)
            self.file.file.flush()

    def start(self, total: int, done: int = 0) -> None:
        self._total, self._t0, self._start = total, time.time(), done
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.term, transient=False)
            self.progress.start()
            self._task = self.progress.add_task("train", total=total, completed=done, stats="")

    @contextmanager
    def bar(self, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A transient progress bar for a phase before training (e.g. tokenizing); yields `advance(n)`. Live on a
        terminal with logger.progress=true only; elsewhere the phase reports its result in one line itself."""
        if not self.live:
            yield lambda n=1: None
            return
        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("eta"), TimeRemainingColumn(), console=self.term, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(task, n)

    def step(self, step: int, m: dict) -> None:
        if not self.main:
            return
        stats = f"loss {m['loss']:.4f} lr {m['lr']:.2e} {m['tokens_per_s']:,.0f} tok/s"
        if self.progress is not None:
            self.progress.update(self._task, completed=step, stats=stats)
            if self.file:
                self.file.print(f"step {step}/{self._total} {stats}")
            return
        done = step - self._start
        eta = (time.time() - self._t0) / max(done, 1) * (self._total - step)
        self.print(f"step {step}/{self._total} {stats} eta {fmt_duration(eta)}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def summary(self, title: str, rows: list[tuple[str, str]], ok: bool = True) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows:
            table.add_row(k, v)
        self.print(Panel(table, title=title, border_style="green" if ok else "red", expand=False))

    def close(self) -> None:
        self.stop()
        if self.file:
            self.file.file.close()
            self.file = None
