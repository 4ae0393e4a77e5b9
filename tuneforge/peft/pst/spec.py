from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, positive


@dataclass
class PstSpec(Spec):
    name: str = knob("pst", "PST: sparse training with a learned top-k mask, parameter-efficient (arXiv 2205.11005); "
                            "the export is (W + beta U V) ⊙ M at `sparsity`")
    sparsity: float = knob(0.5, "final fraction of each adapted linear's weights that are zero, in (0, 1)")
    initial_sparsity: float = knob(0.0, "sparsity during the first initial_warmup of training (the cubic schedule's start)")
    initial_warmup: float = knob(0.1, "fraction of the training steps held at initial_sparsity")
    final_warmup: float = knob(0.3, "fraction of the training steps (the last ones) held at sparsity; > 0 makes the "
                                    "last step reach it")
    r: int = knob(8, "rank of the weight update U V")
    beta: float = knob(1.0, "scale of the weight update: W + beta U V")
    mask_r: int = knob(8, "rank of the data-driven importance A B")
    alpha1: float = knob(1.0, "weight of the low-rank importance A B in S")
    alpha2: float = knob(1.0, "weight of the structured importance R 1ᵀ + 1 Cᵀ in S")
    target_modules: list[str] = knob(["all-linear"], "linears made sparse, or ['all-linear'] (every linear of the "
                                                     "decoder layers)")

    caps = Caps(whole_weights_in_training="its layers read whole weight matrices to rank their importance every step")

    def problems(self):
        out = positive(self, "r", "mask_r") + has_targets(self)
        out += positive(self, "initial_sparsity", "initial_warmup", "final_warmup", "alpha1", "alpha2", "beta",
                        allow_zero=True)
        if not 0 < self.sparsity < 1:
            out.append(f"sparsity={self.sparsity} must be in (0, 1), e.g. sparsity=0.5")
        elif not 0 <= self.initial_sparsity <= self.sparsity:
            out.append(f"initial_sparsity={self.initial_sparsity} must be in [0, sparsity={self.sparsity}]")
        if self.initial_warmup + self.final_warmup >= 1:
            out.append(f"initial_warmup + final_warmup = {self.initial_warmup + self.final_warmup:g} leaves no steps "
                       "for the schedule: keep their sum below 1, e.g. initial_warmup=0.1 final_warmup=0.3")
        return out

    def cross_problems(self, specs):
        p = specs.get("prune")
        if p is not None and p.name != "none":
            return [f"peft=pst with prune={p.name}: PST learns its own mask from the dense weights, up to "
                    f"peft.sparsity, and would regrow the pruned ones: use prune=none (and peft.sparsity="
                    f"{p.sparsity:g}), or peft=perp to retrain a pruned model without new non-zeros"]
        return []
