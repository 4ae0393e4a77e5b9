"""The merge method interface, the knobs every method shares, and the bounded coefficient search.

A method turns the T task vectors of one parameter (tau_t = theta_t - theta_base, stacked on dim 0) into one
merged vector, and says how much of it is added back per parameter:

    merger.combine(taus)            (T, *shape) -> merged vector of that parameter (no coefficient applied)
    merger.scale(coef, where)       the factor for that parameter: coef["lam"] by default; LiNeS a function of
                                    the parameter's block (where = (block index or None, number of blocks))
    merger.coefficients(T)          the coefficients used without a search ({"lam": ...} or {"alpha", "beta"})
    merger.space(T)                 {coefficient: (low, high)} searched with merge.search=true

    theta_merged = theta_base + merger.scale(coef, where) * merger.combine(taus)     (every parameter)

The search evaluates at most `max_evals` points of a grid over `space` (one axis: evenly spaced; two axes:
floor(sqrt(max_evals)) values each) and keeps the best: the highest exact match when the eval data has a
checker (ties: the lower loss), else the lowest eval loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from tuneforge.config.spec import Spec, knob, positive


@dataclass
class MergeSpec(Spec):
    """Knobs every merge method has (each method's spec adds its own)."""

    name: str = knob("none", "merge method (configs/merge/<name>.yaml); none: no merge")
    inputs: list[str] = knob([], "what is merged: run directories, exported Hugging Face models or PEFT LoRA "
                                 "adapter directories of one base (`tuneforge merge DIR DIR ...` sets them)")
    base: Optional[str] = knob(None, "the base model the task vectors are taken against (a Hugging Face directory); "
                                     "null: the inputs' own (a run's model, an adapter's base_model_name_or_path)")
    search: bool = knob(False, "search the coefficients on the recipe's eval data (eval loss, and exact match when "
                               "the data has a checker) instead of using the fixed ones")
    max_evals: int = knob(8, "most evaluations the search may spend (a grid of at most this many points)")
    seed: int = knob(0, "seed of random drops (DARE)")

    def problems(self):
        return positive(self, "max_evals")


def check_range(spec, name: str) -> list[str]:
    lo, hi = getattr(spec, name)
    return [] if lo < hi else [f"{name}={[lo, hi]} must be [low, high] with low < high"]


class Merger:
    def __init__(self, spec):
        self.spec = spec

    def combine(self, taus):
        raise NotImplementedError

    def coefficients(self, n_tasks: int) -> dict[str, float]:
        return {"lam": self.spec.lam if self.spec.lam is not None else 1.0 / n_tasks}

    def space(self, n_tasks: int) -> dict[str, tuple[float, float]]:
        return {"lam": tuple(self.spec.lam_range)}

    def scale(self, coef: dict[str, float], where: tuple[int | None, int]) -> float:
        return coef["lam"]


def grid(space: dict[str, tuple[float, float]], max_evals: int) -> list[dict[str, float]]:
    """At most `max_evals` points: one axis evenly spaced (the middle for 1 point), two axes a k x k grid with
    k = floor(sqrt(max_evals))."""
    per = max_evals if len(space) == 1 else max(1, math.isqrt(max_evals))

    def axis(lo: float, hi: float) -> list[float]:
        return [(lo + hi) / 2] if per == 1 else [lo + (hi - lo) * i / (per - 1) for i in range(per)]

    points = [{}]
    for key, (lo, hi) in space.items():
        points = [{**p, key: round(v, 6)} for p in points for v in axis(lo, hi)]
    return points


def better(row: dict, best: dict | None) -> bool:
    """Higher exact match (when measured), then lower eval loss."""
    if best is None:
        return True
    key = lambda r: (-r.get("exact_match", 0.0), r["eval_loss"])  # noqa: E731
    return key(row) < key(best)


def search(points, evaluate, log) -> tuple[dict, list[dict]]:
    """Evaluate each point (`evaluate(coef) -> eval row`), print it, return (best point, every point's record)."""
    records, best, best_row = [], None, None
    for coef in points:
        row = evaluate(coef)
        records.append({"coefficients": coef, "eval": row})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and "/" not in k)
        log(f"merge search: {', '.join(f'{k}={v:g}' for k, v in coef.items())} -> {shown}")
        if better(row, best_row):
            best, best_row = coef, row
    log(f"merge search: chose {', '.join(f'{k}={v:g}' for k, v in best.items())}")
    return best, records
