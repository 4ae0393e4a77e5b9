from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive

INITS = ("fisher", "magnitude", "random")


@dataclass
class LstSpec(Spec):
    name: str = knob("lst", "Ladder Side-Tuning (arXiv 2206.06522): a small side network beside the frozen model")
    reduction: int = knob(8, "r: the side network's widths (hidden, MLP, head dim) are the backbone's divided by r")
    temperature: float = knob(0.1, "T of the ladder gates mu_i = sigmoid(alpha_i / T) (the paper uses 0.1)")
    gate_init: float = knob(0.0, "alpha_i at init (0: mu_i = 0.5, backbone ladder and side path mixed equally)")
    init: str = knob("fisher", "side blocks start as the backbone pruned by Fisher information on training samples "
                               "(fisher, the authors' fisher-v2), by weight magnitude (magnitude), or random")
    fisher_samples: int = knob(64, "training samples whose squared per-sample gradients sum to the Fisher "
                                   "information of init=fisher (the authors use 1024)")
    drop_every: int = knob(4, "layer dropping: no side block for backbone layers 0, k, 2k, ... (k=4: the authors' "
                              "T5-base setting, layers 1, 5, 9 of 12 dropped); 0 keeps a side block for every layer")
    side_layers: list[int] = knob([], "0-based backbone layers that get a side block (overrides drop_every; empty: "
                                      "use drop_every)")

    def problems(self):
        out = positive(self, "reduction", "temperature", "fisher_samples")
        if self.init == "pruned":
            out.append("init=pruned was renamed: use init=fisher (the paper's pruning) or init=magnitude (by weight "
                       "magnitude, the earlier default)")
        else:
            out += one_of(self, "init", INITS)
        if self.drop_every < 0 or self.drop_every == 1:
            out.append(f"drop_every={self.drop_every} must be 0 (keep every side layer) or >= 2 (1 would drop all)")
        if any(i < 0 for i in self.side_layers) or len(set(self.side_layers)) != len(self.side_layers):
            out.append(f"side_layers={self.side_layers} must be distinct layer indices >= 0")
        return out

    def kept_layers(self, n_layers: int) -> list[int]:
        """The backbone layers that get a side block (ladder, gate and block), in order."""
        if self.side_layers:
            return sorted(self.side_layers)
        return [i for i in range(n_layers) if not self.drop_every or i % self.drop_every]

    @property
    def caps(self):
        no_grad = "the backbone runs without autograd and keeps no activations"
        if self.init == "random":
            return Caps(backbone_without_autograd=no_grad)
        how = ("computes gradients of the backbone's weights on training samples (Fisher information) and copies its "
               "full-precision weights into the side network at start") if self.init == "fisher" else \
            "copies the backbone's largest full-precision weights into the side network at start"
        return Caps(backbone_without_autograd=no_grad, fix="set peft.init=random", whole_weights_at_build=f"peft.init="
                    f"{self.init} {how}")
