from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob


@dataclass
class FreezeSpec(Spec):
    name: str = knob("freeze", "train only the named modules / layers; everything else frozen")
    modules: list[str] = knob([], "glob patterns on parameter names, e.g. ['lm_head.*', '*.norm.*']")
    layers: list[int] = knob([-2, -1], "decoder layer indices trained in full (negative counts from the end)")

    caps = Caps(trains_base_weights=True)

    def problems(self):
        return [] if self.modules or self.layers else ["nothing to train: set peft.modules and/or peft.layers"]
