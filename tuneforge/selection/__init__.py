"""Data selection: one folder per method. A selector picks which training samples a run uses.

Interface: `Selector(spec).select(samples, ctx) -> list[int]` (indices into the tokenized training pool).
- A static selector (`needs_model = False`) runs on rank 0 before the model is built; the runner broadcasts the
  result to every rank. `ctx` gives the seed, the tokenizer and the run directory (caches go there).
- A selector that scores samples with the model (`needs_model = True`) runs after the model is built, on every
  rank (a ZeRO-3 forward is collective), with `ctx.model` set; rank 0's choice is used.
- Any selector may re-select during training through its hooks (`tuneforge.hooks`): in `on_step_start(ctx)`,
  `ctx.data.pool` is every sample, `ctx.data.chosen` the current choice, and `ctx.data.use(indices, ctx.step)`
  switches to a new one (saved in checkpoints, so a resumed run re-selects nothing it already did).
`docs/extending.md` has a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
