from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive


@dataclass
class DseeSpec(Spec):
    name: str = knob("dsee", "DSEE: low-rank + sparse update (arXiv 2111.00160); sparse final weights: export=[merge,prune]")
    r: int = knob(8, "rank of the low-rank part U V")
    alpha: float = knob(16.0, "scaling numerator of the low-rank part: (alpha / r) * U @ V")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear in the layers)")
    sparse_n: int = knob(64, "N: trainable entries of the sparse part S per adapted matrix (fixed support)")
    support: str = knob("grebsmo", "where S lives: grebsmo (the reference: top-N |S| of a GreBsmo decomposition of W "
                                   "whose rank grows by decomp_step per iteration), residual (top-N |W - U V| at a "
                                   "fixed rank decomp_rank: cheaper, deterministic in W) or magnitude (top-N |W|)")
    decomp_iters: int = knob(100, "iterations of the decomposition: grebsmo's rank increments (the reference's 100), "
                                  "residual's alternating steps (at most; it stops when converged)")
    decomp_step: int = knob(5, "grebsmo: rank added per iteration (rank 1, 1+step, ...; below min(rows, cols))")
    decomp_threshold: float = knob(0.01, "grebsmo: hard threshold tau of the sparse part (|W - U V| < tau -> 0); "
                                         "absolute, in the weights' units, as in the reference")
    decomp_rank: int = knob(8, "residual: the fixed rank of the low-rank approximation of W")

    # own layers on plain nn.Linear weights (peft/adapters.py)
    caps = Caps(whole_weights_in_training="its layers read and write whole weight matrices")

    def problems(self):
        out = positive(self, "r", "alpha", "decomp_rank", "decomp_iters", "decomp_step")
        out += positive(self, "sparse_n", "decomp_threshold", allow_zero=True)
        return out + one_of(self, "support", ("grebsmo", "residual", "magnitude")) + has_targets(self)
