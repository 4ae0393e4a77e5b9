"""The `precision=coat` mode: FP8 optimizer states (its own optimizer, CoatAdamW) and FP8 saved activations."""

from __future__ import annotations

from tuneforge.precision.coat.spec import CoatSpec
from tuneforge.precision.modes import Precision
from tuneforge.registry import register


@register("precision", "coat", config=CoatSpec)
class Coat(Precision):
    def __init__(self, spec: CoatSpec):
        super().__init__(spec)
        self.owns_optimizer = spec.optimizer_states

    def apply(self, model):
        if self.spec.activations:
            from tuneforge.precision.coat.layer import compress

            compress(model, self.spec.activation_group)
        return model

    def optimizer(self, groups: list[dict], optim):
        if not self.spec.optimizer_states:
            return optim.build(groups)
        from tuneforge.precision.coat.optimizer import CoatAdamW

        o, s = optim.spec, self.spec
        return CoatAdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, group=s.group_size,
                         expand_min=s.expand_min, expansion=s.expansion)
