from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob


@dataclass
class FullSpec(Spec):
    name: str = knob("full", "train every parameter")

    caps = Caps(trains_base_weights=True)

    def trainable_estimate(self, parts):
        return "full fine-tuning", parts.total
