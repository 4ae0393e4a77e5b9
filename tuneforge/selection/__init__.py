"""Data selection: one folder per method. A selector picks which training samples a run uses.

Interface: `Selector(spec).select(samples, ctx) -> list[int]` (indices into the tokenized training pool).
- A static selector (`needs_model = False`) runs on rank 0 before the model is built; the runner broadcasts the
  result to every rank. `ctx` gives the seed, the tokenizer and the run directory (caches go there).
- A selector that scores samples with the model (`needs_model = True`) runs after the model is built, on every
  rank (a ZeRO-3 forward is collective), with `ctx.model` set; rank 0's choice is used.
- Any selector may re-select during training through its hooks (`tuneforge.hooks`): in `on_step_start(ctx)`,
  `ctx.data.pool` is every sample, `ctx.data.chosen` the current choice, and `ctx.data.use(indices, ctx.step)`
  switches to a new one (saved in checkpoints, so a resumed run re-selects nothing it already did).
Every selection is written to <run_dir>/selection/: the runner writes `selected.json` (the initial choice, keyed by
a fingerprint of the pool, the selection config and the seed, so a resumed or repeated run reuses it instead of
selecting again); a selector writes its scores and each re-selection with `record(run_dir, step, chosen, scores)`.
`docs/extending.md` has a worked example.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.distributed import dist
from tuneforge.hooks import Hooks


@dataclass
class SelectionContext:
    seed: int
    tokenizer: Any
    run_dir: Path
    model: Any = None  # the model being trained, for selectors with needs_model = True


class Selector(Hooks):
    needs_model = False

    def __init__(self, spec):
        self.spec = spec

    def select(self, samples: list, ctx: SelectionContext) -> list[int]:
        raise NotImplementedError


def keep_count(fraction: float, count: int, n: int) -> int:
    """How many of n samples a subset keeps: `count` when > 0, else the `fraction` share (at least one)."""
    return min(count, n) if count > 0 else max(1, round(n * fraction))


def record(run_dir: Path | None, step: int, chosen: list[int], scores: list[float] | None = None, **extra) -> None:
    """Write one selection (the chosen pool indices, each sample's score, and anything else a method reports) to
    <run_dir>/selection/step_<step>.json, on rank 0."""
    if run_dir is None or not dist.is_main():
        return
    out = Path(run_dir) / "selection"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_{step}.json").write_text(json.dumps({"step": step, "chosen": list(chosen), "scores": scores, **extra}))


def fingerprint(samples: list, specs: list, seed: int) -> str:
    """What an initial selection depends on: the encoded pool, the configs given (selection, model) and the seed."""
    h = hashlib.sha256(json.dumps([[asdict(s) for s in specs], seed], sort_keys=True, default=str).encode())
    for s in samples:
        h.update(repr(getattr(s, "input_ids", s)).encode())
        h.update(repr(getattr(s, "labels", None)).encode())
    return h.hexdigest()[:16]


def saved_choice(run_dir: Path | None, key: str) -> list[int] | None:
    """The initial choice a previous run in this directory made for the same fingerprint, if any."""
    path = None if run_dir is None else Path(run_dir) / "selection" / "selected.json"
    if path is None or not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["chosen"] if saved.get("fingerprint") == key else None


def save_choice(run_dir: Path | None, key: str, chosen: list[int], pool: int) -> None:
    if run_dir is None or not dist.is_main():
        return
    out = Path(run_dir) / "selection"
    out.mkdir(parents=True, exist_ok=True)
    (out / "selected.json").write_text(json.dumps({"fingerprint": key, "pool": pool, "kept": len(chosen),
                                                   "chosen": list(chosen)}))
