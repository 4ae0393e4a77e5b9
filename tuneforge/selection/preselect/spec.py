"""`selection=preselect` config, and where its scoring models and their benchmark ranking come from (no torch)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.spec import Spec, knob, positive

LOWER_IS_BETTER = ("loss", "ppl")  # eval metrics ranked in reverse (a lower eval loss is a better model)


@dataclass
class PreSelectSpec(Spec):
    name: str = knob("preselect", "PreSelect: keep the documents a fastText classifier rates most predictive")
    models: list[str] = knob([], "scoring models (at least 3): Hugging Face directories, .gguf files, pkg:// refs, "
                                 "tuneforge run directories (their exported model: run `tuneforge export` first), or "
                                 "configs/model presets as <preset>@<seed> (random-init presets, for tests)")
    ranking: list[float] = knob([], "each model's benchmark score, higher is better, in the order of `models`; empty: "
                                    "read `metric` from each run directory's `tuneforge eval` result")
    metric: str = knob("exact_match", "eval result ranking the models when `ranking` is empty (eval.json, else "
                                      "summary.json's last eval); metrics with loss/ppl in the name: lower is better")
    probe: int = knob(2000, "documents scored with every model to label the classifier's training set (a seeded "
                            "random sample of the pool; 0: every document)")
    label_share: float = knob(0.0, "0: the paper's labels (positive: documents where every model pair agrees; "
                                   "negative: as many of the lowest); >0: top and bottom share of the probed documents")
    fraction: float = knob(0.1, "share of the pool kept, by classifier score (ignored when count > 0)")
    count: int = knob(0, "number of documents kept (0: use fraction)")
    epoch: int = knob(3, "fastText training epochs (paper: 3)")
    lr: float = knob(0.1, "fastText learning rate (paper: 0.1)")
    word_ngrams: int = knob(2, "fastText word n-grams (paper: 2)")
    dim: int = knob(100, "fastText vector size (fastText's default: 100)")
    bucket: int = knob(2_000_000, "fastText n-gram hash buckets (fastText's default: 2M, ~0.8 GB at dim 100)")
    batch_size: int = knob(8, "documents per scoring forward pass")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        out += [] if 0 <= self.label_share <= 0.5 else [f"label_share={self.label_share} must be in [0, 0.5]"]
        out += positive(self, "count", "probe", allow_zero=True)
        out += positive(self, "epoch", "lr", "word_ngrams", "dim", "bucket", "batch_size")
        if len(self.models) < 3:
            out.append(f"selection.models lists {len(self.models)} scoring model(s): PreSelect ranks model pairs and "
                       "needs at least 3, e.g. selection.models=[/models/a,/models/b,/models/c] with their benchmark "
                       "scores in selection.ranking=[40.1,45.3,51.0] (or run directories evaluated with tuneforge eval)")
            return out
        try:
            scores = benchmark_scores(self)
        except ValueError as e:
            return out + [str(e)]
        if len(set(scores)) == 1:
            out.append(f"selection.ranking={scores}: every model has the same score, so no pair has an order; "
                       "give models of different benchmark scores")
        return out


def is_run_dir(ref: str) -> bool:
    return (Path(ref) / "config.yaml").is_file() and (Path(ref) / "summary.json").is_file()


def benchmark_scores(spec: PreSelectSpec) -> list[float]:
    """One score per scoring model, higher = better: `ranking`, or `metric` read from each run directory."""
    if spec.ranking:
        if len(spec.ranking) != len(spec.models):
            raise ValueError(f"selection.ranking gives {len(spec.ranking)} scores for {len(spec.models)} models: give "
                             "one benchmark score per model, in the order of selection.models")
        return [float(s) for s in spec.ranking]
    scores, missing = [], []
    for ref in spec.models:
        value = eval_result(ref, spec.metric)
        if value is None:
            missing.append(ref)
        scores.append(value)
    if missing:
        raise ValueError(f"selection.ranking is empty and no {spec.metric!r} eval result was found for {missing}: "
                         f"run `tuneforge eval run_dir=<dir>` on each run directory, or give every model's benchmark "
                         f"score in selection.ranking=[...] (one per model)")
    sign = -1.0 if any(w in spec.metric for w in LOWER_IS_BETTER) else 1.0
    return [sign * s for s in scores]


def eval_result(ref: str, metric: str) -> float | None:
    """`metric` from a run directory's eval.json (`tuneforge eval`), else from summary.json's last eval."""
    if not is_run_dir(ref):
        return None
    for name, pick in (("eval.json", lambda d: d), ("summary.json", lambda d: d.get("eval") or {})):
        path = Path(ref) / name
        if path.is_file():
            value = pick(json.loads(path.read_text())).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
    return None
