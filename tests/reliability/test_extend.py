"""Extending a finished run: resuming a completed 4-step run with trainer.max_steps=8 rebuilds the learning-rate
schedule for 8 steps (and says so), instead of running step 5 at the old schedule's final rate (0 for cosine)."""

from __future__ import annotations

import math

from tests.conftest import ok
from tests.reliability.helpers import rows, train

PEAK = 3e-3
SCHED = ["sched=cosine", "sched.warmup_steps=1", "sched.min_lr_ratio=0.0", f"optim.lr={PEAK}"]


def cosine(step: int, total: int, warmup: int = 1) -> float:
    """The lr of 0-based optimizer step `step`, written from the schedule's definition (warmup, then cosine)."""
    if step < warmup:
        return PEAK * (step + 1) / (warmup + 1)
    p = min(1.0, (step - warmup) / (total - warmup))
    return PEAK * 0.5 * (1 + math.cos(math.pi * p))


def test_extending_a_finished_run_rebuilds_the_schedule(tmp_path):
    ok(train(tmp_path, "run", *SCHED, "trainer.max_steps=4"))
    assert [r["lr"] for r in rows(tmp_path / "run")] == [cosine(s, 4) for s in range(4)]
    proc = ok(train(tmp_path, "run", *SCHED, "trainer.max_steps=8", "trainer.resume=auto"))
    out = proc.stdout + proc.stderr
    assert "resumed from" in out and "step_4" in out
    assert "schedule is rebuilt for 8 steps" in out
    got = rows(tmp_path / "run")
    assert [r["step"] for r in got] == list(range(1, 9))
    for r in got[4:]:  # steps 5..8 follow the 8-step schedule from step 4 on; step 5 no longer runs at lr 0
        assert math.isclose(r["lr"], cosine(r["step"] - 1, 8), rel_tol=1e-9), (r["step"], r["lr"])
    assert got[4]["lr"] > 0.4 * PEAK
