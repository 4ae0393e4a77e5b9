from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive


@dataclass
class TriAdaptLoraSpec(Spec):
    name: str = knob("triadaptlora", "TriAdaptLoRA: triangular-core LoRA whose ranks grow by importance (arXiv 2501.08008)")
    r_init: int = knob(2, "rank every module starts with")
    reference_rank: int = knob(8, "target average rank: the total rank budget is reference_rank x adapted modules")
    r_max: int = knob(16, "largest rank one module may reach (A, B and the r x r core are allocated at this size)")
    grow_by: int = knob(4, "rank added to a module when it grows (the authors use reference_rank / 2)")
    alpha: float = knob(16.0, "scaling numerator: the update is (alpha / r_init) * B C A, fixed while ranks grow")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear in the layers)")
    warmup: int = knob(10, "steps before the first growth decision")
    grow_every: int = knob(10, "steps between growth decisions")
    growth: str = knob("linear", "how many modules grow at step t: linear (the paper's best) or exponential in the "
                                 "fraction of the run done")

    # own layers on plain nn.Linear weights (peft/adapters.py); growing a rank restarts its Adam rows (moments and
    # per-element step counts: a grown block takes fresh Adam steps)
    caps = Caps(whole_weights_in_training="its layers read and write whole weight matrices", writes_optimizer_rows=True,
                element_steps=True)

    def problems(self):
        out = positive(self, "r_init", "reference_rank", "r_max", "grow_by", "alpha", "grow_every")
        out += positive(self, "warmup", allow_zero=True) + one_of(self, "growth", ("linear", "exponential"))
        if not self.r_init <= self.reference_rank <= self.r_max:
            out.append(f"need r_init <= reference_rank <= r_max (got {self.r_init}, {self.reference_rank}, {self.r_max})")
        return out + has_targets(self)
