from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive

POLICY = ("train", "freeze")


@dataclass
class LisaSpec(Spec):
    name: str = knob("lisa", "Layerwise Importance Sampled AdamW (arXiv 2403.17919)")
    gamma: int = knob(2, "middle (decoder) layers trained at a time")
    period: int = knob(20, "K: optimizer steps between resamples of the active layers")
    sampling: str = knob("uniform", "uniform (the released code) or weighted: inclusion probability proportional to "
                                    "each layer's measured relative update norm ||dW||/||W|| (running estimate; docs/lisa.md)")
    importance_decay: float = knob(0.5, "sampling=weighted: weight of the previous estimate when a layer's update norm "
                                        "is measured again (0: keep only the latest period)")
    embed: str = knob("train", "input embeddings: train (always active) or freeze")
    head: str = knob("train", "LM head: train (always active) or freeze; tied to embed in many small models")
    norm: str = knob("train", "final norm and any other parameter outside the layers: train or freeze")
    inactive_state: str = knob("free", "optimizer state of layers leaving the active set: free, or offload to CPU "
                                       "and restore when the layer is sampled again")

    # the engine is rebuilt at each switch; Adam state moves per parameter (distributed/optim_state)
    caps = Caps(trains_base_weights=True, carries_optimizer_state="across layer switches")

    def problems(self):
        out = positive(self, "gamma", "period") + one_of(self, "sampling", ("uniform", "weighted"))
        if not 0 <= self.importance_decay < 1:
            out.append(f"importance_decay={self.importance_decay} must be in [0, 1)")
        for k in ("embed", "head", "norm"):
            out += one_of(self, k, POLICY)
        return out + one_of(self, "inactive_state", ("free", "offload"))

    def trainable_estimate(self, parts):
        """gamma layers at a time, plus embeddings, head and norms when trained (tied: the head is the embedding)."""
        always = (parts.embed if self.embed == "train" else 0) + (parts.head if self.head == "train" else 0)
        n = always + (parts.other if self.norm == "train" else 0) + self.gamma * parts.per_layer
        tied = " (tied)" if parts.head == 0 else ""
        return f"LISA gamma={self.gamma}, embed={self.embed}, head={self.head}{tied}", n
