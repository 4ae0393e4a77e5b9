from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive


@dataclass
class DseeSpec(Spec):
    name: str = knob("dsee", "DSEE: low-rank + sparse update, optionally sparse final weights (arXiv 2111.00160)")
    r: int = knob(8, "rank of the low-rank part U V")
    alpha: float = knob(16.0, "scaling numerator of the low-rank part: (alpha / r) * U @ V")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear in the layers)")
    sparse_n: int = knob(64, "N: trainable entries of the sparse part S per adapted matrix (fixed support)")
    support: str = knob("residual", "where S lives: residual (top-N |W - low-rank(W)|, the paper's decomposition) "
                                    "or magnitude (top-N |W|)")
    decomp_rank: int = knob(8, "rank of the low-rank approximation of W whose residual chooses the support")
    decomp_iters: int = knob(10, "max iterations of the GreBsmo low-rank + sparse decomposition of W (1: one "
                                 "truncated SVD step)")
    prune: str = knob("none", "prune the merged weights at export: none, unstructured (magnitude), rows (L2 norm) "
                              "or heads (whole attention heads of every layer)")
    prune_sparsity: float = knob(0.0, "fraction of each adapted matrix's entries (or rows), or of each layer's "
                                      "attention heads, zeroed at export")

    # own layers on plain nn.Linear weights (peft/adapters.py)
    caps = Caps(whole_weights_in_training="its layers read and write whole weight matrices")

    def problems(self):
        out = positive(self, "r", "alpha", "decomp_rank", "decomp_iters") + positive(self, "sparse_n", allow_zero=True)
        out += one_of(self, "support", ("residual", "magnitude")) + one_of(self, "prune", ("none", "unstructured", "rows", "heads"))
        if not 0 <= self.prune_sparsity < 1:
            out.append(f"prune_sparsity={self.prune_sparsity} must be in [0, 1)")
        if self.prune == "none" and self.prune_sparsity > 0:
            out.append(f"prune_sparsity={self.prune_sparsity} needs prune=unstructured, rows or heads")
        if self.prune != "none" and self.prune_sparsity == 0:
            out.append(f"prune={self.prune} needs prune_sparsity > 0")
        return out + has_targets(self)
