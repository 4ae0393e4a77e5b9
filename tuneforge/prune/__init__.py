"""Post-training pruning of a model's linear weights: one folder per method (`prune=<name>`), the shared parts here
and in calib.py (calibration inputs, per-linear statistics), masks.py (unstructured and N:M masks) and report.py
(the per-layer table).

    prune=none | magnitude | wanda | sparsegpt | dsnot       configs/prune/<name>.yaml, @register("prune", <name>)

Where it runs:
- as a stage of a training run (`prune=wanda` in a train recipe): runner/model.py builds load -> quantize (only
  quant=none passes the checks: a quantized base holds no full-precision weights to prune) -> **prune** ->
  apply the tuning method -> precision. Rank 0 calibrates on the run's tokenized training samples and saves the
  pruned weights and the report in <run_dir>/prune/<fingerprint>/; the other ranks, a resumed run, `tuneforge
  eval` and `tuneforge export` load them from there (they have no calibration samples). Full fine-tuning moves
  the zeros; plain LoRA keeps W0's zeros but its merged export W0 + BA is dense again (docs/pruning.md).
- `tuneforge prune run_dir=DIR prune=<name>`: a finished run's merged model, written to DIR/pruned/ as a Hugging
  Face directory with sparsity.json and the report; `tuneforge prune model=... prune=<name> out=DIR`: a base
  model (runner/offline.py).

A method is a `Pruner` whose `prune(w, stats, name)` turns one fp32 weight matrix [out, in] and its calibration
statistics into (pruned weight, pruned-entry mask, the weight before any reconstruction); `run` walks the
decoder layers in order, each on the outputs of the layers pruned before it (the references' sequential
calibration), and writes the result back in the weight's own dtype, zeros exact.

Knobs shared by every method (`PruneSpec`): `sparsity`, `pattern` (unstructured, or N:M: N of every M consecutive
input weights of a row set to zero -- the references' prune_n:prune_m, so N/M must equal `sparsity`; 2:4 and 4:8
are NVIDIA's "2 of 4 kept" too), `scope` (the comparison group of an unstructured mask: see masks.py), the
calibration `n_samples` windows of `seqlen` tokens, and `target_modules`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.spec import Spec, knob, one_of

PATTERN = re.compile(r"^(\d+):(\d+)$")


def nm(pattern: str) -> tuple[int, int] | None:
    """(N, M) of an "N:M" pattern, None for unstructured."""
    m = PATTERN.match(str(pattern))
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class PruneSpec(Spec):
    """Knobs every pruning method has (a method's spec adds its own)."""

    name: str = knob("none", "pruning method (configs/prune/<name>.yaml)")
    sparsity: float = knob(0.5, "fraction of each pruned linear's weights set to zero, in (0, 1)")
    pattern: str = knob("unstructured", "unstructured, or N:M (N of every M consecutive input weights of each row "
                                        "zeroed, e.g. 2:4 or 4:8; needs sparsity = N/M)")
    scope: str = knob("uniform", "unstructured masks: uniform (every output row loses exactly `sparsity` of its "
                                 "weights: Wanda's per-output comparison group) or per-layer (the lowest scores of "
                                 "the whole matrix: magnitude's group; SparseGPT: of each column block); N:M masks ignore it")
    n_samples: int = knob(128, "calibration windows from the recipe's training data (the references' 128)")
    seqlen: int = knob(2048, "tokens per calibration window (the references' 2048; the data's samples are "
                             "shuffled, concatenated and cut; a shorter dataset gives fewer windows, logged)")
    target_modules: list[str] = knob(["all-linear"], "linears pruned: names inside the decoder layers, or "
                                                     "all-linear (every linear of every decoder layer, as the "
                                                     "references; never the embeddings or the LM head)")

    def problems(self) -> list[str]:
        out = [] if 0 < self.sparsity < 1 else [f"sparsity={self.sparsity} must be in (0, 1), e.g. sparsity=0.5"]
        pat = nm(self.pattern)
        if self.pattern != "unstructured" and pat is None:
            out.append(f"pattern={self.pattern!r} is neither unstructured nor N:M: use pattern=unstructured, "
                       "pattern=2:4 or pattern=4:8")
        elif pat is not None:
            n, m = pat
            if not 0 < n < m:
                out.append(f"pattern={self.pattern}: N:M needs 0 < N < M, e.g. pattern=2:4")
            elif abs(self.sparsity - n / m) > 1e-9:
                out.append(f"pattern={self.pattern} zeroes {n} of every {m} weights (sparsity {n / m:g}), but "
                           f"sparsity={self.sparsity}: set sparsity={n / m:g}")
        out += one_of(self, "scope", ("uniform", "per-layer"))
        if self.n_samples < 1 or self.seqlen < 1:
            out.append(f"n_samples={self.n_samples}, seqlen={self.seqlen}: both must be >= 1")
        if not self.target_modules:
            out.append("target_modules is empty: list linear names, or [all-linear]")
        return out

    def cross_problems(self, specs: dict) -> list[str]:
        if self.name == "none":
            return []
        q, z = specs.get("quant"), specs.get("zero")
        out = []
        if q is not None and q.caps.quantized_base:
            out.append(f"prune={self.name} with quant={q.name}: pruning needs the full-precision weights, and the "
                       f"base holds {q.caps.quantized_base} weights: use quant=none, or prune first (`tuneforge prune "
                       "model=... prune=... out=DIR`) and quantize model.path=DIR")
        if z is not None and z.stage == 3 and specs["model"].init == "pretrained":
            out.append(f"prune={self.name} with a pretrained model under ZeRO-3: pruning reads each weight matrix "
                       "whole, but the weights load straight into ZeRO-3 partitions (zero.Init): use zero=zero2 "
                       "(or prune first with `tuneforge prune model=... out=DIR` and train on model.path=DIR)")
        return out


class Pruner:
    """One pruning method. `prune(w, stats, name)` -> (pruned w, bool mask of pruned entries, w before any
    reconstruction: w with the method's first mask applied, for the report's `error_before`)."""

    needs_data = True  # calibration statistics decide the mask (magnitude: only the report uses them)

    def __init__(self, spec):
        self.spec = spec

    @staticmethod
    def check_model(spec, config) -> list[str]:
        """N:M groups and column blocks must tile each pruned linear's input features."""
        from tuneforge.models.shapes import describe

        shape, pat = describe(config), nm(spec.pattern)
        if shape is None or pat is None:
            return []
        try:
            linears = shape.linears(spec.target_modules)
        except ValueError as e:
            return [f"prune.{e.args[0]}"]
        bad = sorted({f"{x.name.rsplit('.', 1)[-1]} ({x.in_features})" for x in linears if x.in_features % pat[1]})
        return [f"prune.pattern={spec.pattern}: groups of {pat[1]} do not tile the input features of "
                f"{', '.join(bad)}: use pattern=unstructured"] if bad else []

    def prune(self, w, stats, name: str):
        raise NotImplementedError

    def apply(self, model, ctx):
        """Prune `model` in place as a run's build stage (see the module docstring); returns it."""
        from tuneforge.prune.stage import apply

        return apply(self, model, ctx)


def fingerprint(spec, specs: dict, seed: int) -> str:
    """What a pruned model depends on: pruned weights saved for other settings are never reused."""
    key = {"prune": dataclasses.asdict(spec), "seed": seed,
           **{g: dataclasses.asdict(specs[g]) for g in ("model", "data") if g in specs}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_dir(run_dir, spec, specs: dict, seed: int) -> Path | None:
    return Path(run_dir) / "prune" / fingerprint(spec, specs, seed) if run_dir is not None else None
