from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive


@dataclass
class LstSpec(Spec):
    name: str = knob("lst", "Ladder Side-Tuning (arXiv 2206.06522): a small side network beside the frozen model")
    reduction: int = knob(8, "r: the side network's widths (hidden, MLP, head dim) are the backbone's divided by r")
    temperature: float = knob(0.1, "T of the ladder gates mu_i = sigmoid(alpha_i / T) (the paper uses 0.1)")
    gate_init: float = knob(0.0, "alpha_i at init (0: mu_i = 0.5, backbone ladder and side path mixed equally)")
    init: str = knob("pruned", "side blocks: pruned (from the backbone by weight magnitude, as in the paper) or random")

    def problems(self):
        return positive(self, "reduction", "temperature") + one_of(self, "init", ("pruned", "random"))

    @property
    def caps(self):
        no_grad = "the backbone runs without autograd and keeps no activations"
        if self.init != "pruned":
            return Caps(backbone_without_autograd=no_grad)
        return Caps(backbone_without_autograd=no_grad, fix="set peft.init=random",
                    whole_weights_at_build="peft.init=pruned copies the backbone's largest full-precision weights into "
                                           "the side network at start")
