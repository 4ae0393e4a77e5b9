"""`selection=none`: train on every sample."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob
from tuneforge.registry import register
from tuneforge.selection import Selector


@dataclass
class NoSelectionSpec(Spec):
    name: str = knob("none", "use every training sample")


@register("selection", "none", config=NoSelectionSpec)
class All(Selector):
    def select(self, samples, ctx):
        return list(range(len(samples)))
