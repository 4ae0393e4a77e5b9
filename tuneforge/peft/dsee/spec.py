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
    support: str = knob("residual", "where S lives: residual (top-N |W - low-rank(W)|, the paper's decomposition) "
                                    "or magnitude (top-N |W|)")
    decomp_rank: int = knob(8, "rank of the low-rank approximation of W whose residual chooses the support")
    decomp_iters: int = knob(10, "max iterations of the GreBsmo low-rank + sparse decomposition of W (1: one "
                                 "truncated SVD step)")

    # own layers on plain nn.Linear weights (peft/adapters.py)
    caps = Caps(whole_weights_in_training="its layers read and write whole weight matrices")

    def problems(self):
        out = positive(self, "r", "alpha", "decomp_rank", "decomp_iters") + positive(self, "sparse_n", allow_zero=True)
        return out + one_of(self, "support", ("residual", "magnitude")) + has_targets(self)
