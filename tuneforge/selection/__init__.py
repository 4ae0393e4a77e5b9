"""Data selection: one folder per method. A selector picks which training samples a run uses.

Interface: `Selector(spec).select(samples, ctx) -> list[int]` (indices into the tokenized training set).
It runs on rank 0 before the model is built; the runner broadcasts the result to every rank. `ctx` gives
the seed, the tokenizer and the run directory (methods that score samples write their caches there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SelectionContext:
    seed: int
    tokenizer: Any
    run_dir: Path


class Selector:
    def __init__(self, spec):
        self.spec = spec

    def select(self, samples: list, ctx: SelectionContext) -> list[int]:
        raise NotImplementedError
