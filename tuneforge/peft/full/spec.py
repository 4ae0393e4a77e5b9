from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob


@dataclass
class FullSpec(Spec):
    name: str = knob("full", "train every parameter")
