from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob, one_of, positive

POLICY = ("train", "freeze")


@dataclass
class LisaSpec(Spec):
    name: str = knob("lisa", "Layerwise Importance Sampled AdamW (arXiv 2403.17919)")
    gamma: int = knob(2, "middle (decoder) layers trained at a time")
    period: int = knob(20, "K: optimizer steps between resamples of the active layers")
    sampling: str = knob("uniform", "uniform (the released code) or weighted (p ~ layer weight norm, see docs)")
    embed: str = knob("train", "input embeddings: train (always active) or freeze")
    head: str = knob("train", "LM head: train (always active) or freeze; tied to embed in many small models")
    norm: str = knob("train", "final norm and any other parameter outside the layers: train or freeze")
    inactive_state: str = knob("free", "optimizer state of layers leaving the active set: free, or offload to CPU "
                                       "and restore when the layer is sampled again")

    def problems(self):
        out = positive(self, "gamma", "period") + one_of(self, "sampling", ("uniform", "weighted"))
        for k in ("embed", "head", "norm"):
            out += one_of(self, k, POLICY)
        return out + one_of(self, "inactive_state", ("free", "offload"))
