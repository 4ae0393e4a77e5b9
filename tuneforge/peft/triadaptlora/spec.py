from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob, one_of, positive

SCHEDULES = ("linear", "exponential", "cosine")


@dataclass
class TriAdaptLoraSpec(Spec):
    name: str = knob("triadaptlora", "TriAdaptLoRA: LoRA whose per-module rank grows with importance (arXiv 2501.08008)")
    r_init: int = knob(4, "rank every module starts with")
    r_max: int = knob(16, "largest rank a module may grow to (A and B are allocated at this size)")
    alpha: float = knob(8.0, "scaling numerator: the update is (alpha / r_init) * B @ A, fixed while ranks grow")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear in the layers)")
    grow_every: int = knob(10, "steps between growth decisions")
    grow_start: int = knob(10, "first step at which ranks may grow (after the adapters have learnt something)")
    grow_until: float = knob(0.8, "last growth decision at this fraction of the run's total steps")
    schedule: str = knob("linear", "threshold tau(t) from 1 down to tau_end: linear (the paper's best), exponential, cosine")
    tau_end: float = knob(0.0, "threshold at the last decision (a module grows when importance / max >= tau)")

    def problems(self):
        out = positive(self, "r_init", "r_max", "alpha", "grow_every") + positive(self, "grow_start", allow_zero=True)
        if self.r_max < self.r_init:
            out.append(f"r_max={self.r_max} must be >= r_init={self.r_init}")
        if not 0 < self.grow_until <= 1:
            out.append(f"grow_until={self.grow_until} must be in (0, 1]")
        if not 0 <= self.tau_end < 1:
            out.append(f"tau_end={self.tau_end} must be in [0, 1)")
        out += one_of(self, "schedule", SCHEDULES)
        return out + ([] if self.target_modules else ["target_modules is empty: list module names or use ['all-linear']"])
