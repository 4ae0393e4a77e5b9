from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive


@dataclass
class SwitchLoraSpec(Spec):
    name: str = knob("switchlora", "SwitchLoRA: LoRA vectors switched with candidates during training (arXiv 2406.06564)")
    r: int = knob(128, "adapter rank")
    alpha: float = knob(1.0, "scaling numerator: the update is (alpha / r) * B @ A (the authors use 1: their candidate init already sizes B A)")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear in the layers)")
    interval: float = knob(40.0, "interval_0: initial steps between switches of one vector (r / interval vectors of A "
                                 "and of B are switched per layer per step)")
    descent_ratio: float = knob(0.1, "the switching frequency falls exponentially to 0.3x its start at "
                                     "descent_ratio x total steps")
    descent_steps: int = knob(0, "explicit step for that 0.3x point (0: use descent_ratio)")
    freeze_steps: int = knob(5, "N: steps the counterpart of a switched vector stays frozen (Adam re-warm-up)")
    pool: int = knob(0, "candidate vectors per matrix (0: min(in, out) as in the paper; lower it to save memory)")
    candidate_order: str = knob("sequential", "which candidate a switch takes: sequential (the next in the pool, as "
                                              "the authors' code) or random (uniform among those not held)")

    # own layers on plain nn.Linear weights (peft/adapters.py); switching restarts the Adam rows (moments and
    # per-element step counts) of the swapped vectors' counterparts
    caps = Caps(whole_weights_in_training="its layers read and write whole weight matrices", writes_optimizer_rows=True,
                element_steps=True)

    def problems(self):
        out = positive(self, "r", "alpha", "interval") + positive(self, "freeze_steps", "pool", "descent_steps",
                                                                  allow_zero=True)
        out += one_of(self, "candidate_order", ("sequential", "random"))
        if not 0 < self.descent_ratio <= 10:
            out.append(f"descent_ratio={self.descent_ratio} must be in (0, 10]")
        if 0 < self.pool <= self.r:
            out.append(f"pool={self.pool} must exceed r={self.r} (there must be candidates to switch to)")
        return out + has_targets(self)
