"""Fault injection for tests (never set in normal use): TUNEFORGE_FAULTS="kind[@stage][:step=N][:rank=R],...".

Each fault names a point in the code where it fires:
    kill@<save stage>   SIGKILL this process at a stage of a checkpoint save (writing, ds_written,
                        manifest_written, committed)
    sigterm@<save stage> send this process SIGTERM at that stage (a second signal during a save)
    enospc@save         raise ENOSPC (disk full) while a checkpoint is written
    nan@loss            make the loss non-finite (step=N: only at step N; steps=N-M: a range)
    sigterm@step        send this process SIGTERM at the start of step N
    sigterm@micro       send this process SIGTERM after the first micro-batch of step N (mid-accumulation)
    die@step            exit this rank abruptly (os._exit(9)) at the start of step N
    slow@step:ms=M      sleep M milliseconds at the start of every step (steps=N-M: only those), to interrupt a run
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "TUNEFORGE_FAULTS"


def _parse() -> list[dict]:
    out = []
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        head, *opts = item.split(":")
        kind, _, stage = head.partition("@")
        spec = {"kind": kind, "stage": stage}
        for opt in opts:
            k, _, v = opt.partition("=")
            spec[k] = v
        out.append(spec)
    return out


def active(kind: str, stage: str = "", step: int | None = None) -> dict | None:
    """The first fault of `kind` at `stage` that applies to this rank and step (None: no fault)."""
    rank = int(os.environ.get("RANK", "0"))
    for f in _parse():
        if f["kind"] != kind or (f["stage"] and f["stage"] != stage):
            continue
        if "rank" in f and int(f["rank"]) != rank:
            continue
        if "step" in f and (step is None or int(f["step"]) != step):
            continue
        if "steps" in f:
            lo, _, hi = f["steps"].partition("-")
            if step is None or not int(lo) <= step <= int(hi or lo):
                continue
        return f
    return None


def at_save(stage: str, step: int) -> None:
    """Called at each stage of a checkpoint save."""
    if active("kill", stage, step):
        os.kill(os.getpid(), signal.SIGKILL)
    if active("sigterm", stage, step):
        os.kill(os.getpid(), signal.SIGTERM)
    if stage == "writing" and active("enospc", "save", step):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def at_step(step: int) -> None:
    """Called at the start of each optimizer step."""
    if active("sigterm", "step", step):
        os.kill(os.getpid(), signal.SIGTERM)
    if active("die", "step", step):
        os._exit(9)
    slow = active("slow", "step", step)
    if slow:
        time.sleep(int(slow.get("ms", "100")) / 1000)


def at_micro(step: int, micro: int) -> None:
    """Called after each micro-batch's backward."""
    if micro == 0 and active("sigterm", "micro", step):
        os.kill(os.getpid(), signal.SIGTERM)
