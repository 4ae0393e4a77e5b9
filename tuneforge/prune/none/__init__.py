"""`prune=none`: the model is not pruned (the default of every recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob
from tuneforge.prune import Pruner
from tuneforge.registry import register


@dataclass
class NoPruneSpec(Spec):
    name: str = knob("none", "no pruning")


@register("prune", "none", config=NoPruneSpec)
class NoPrune(Pruner):
    @staticmethod
    def check_model(spec, config) -> list[str]:
        return []

    def apply(self, model, ctx):
        return model
