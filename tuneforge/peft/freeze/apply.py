"""`peft=freeze`: partial fine-tuning. Parameters matching `modules` globs or inside listed decoder layers
train; all others are frozen (requires_grad=False, so they get no gradients and no optimizer state)."""

from __future__ import annotations

from fnmatch import fnmatch

from tuneforge.errors import RunError
from tuneforge.models.layers import decoder_layers, layer_of_param
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.freeze.spec import FreezeSpec
from tuneforge.registry import register


@register("peft", "freeze", config=FreezeSpec)
class Freeze(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        n, out = shape.n_layers, []
        bad = [i for i in spec.layers if not -n <= i < n]
        if bad:
            out.append(f"peft.layers={list(spec.layers)}: {bad} out of range for the model's {n} layers: use indices "
                       f"in [{-n}, {n - 1}] (negative counts from the end)")
        names = [name for name, _ in shape.model.named_parameters()]
        if spec.modules and not spec.layers and not any(fnmatch(x, pat) for x in names for pat in spec.modules):
            out.append(f"peft.modules={list(spec.modules)} matches no parameter of the model: use globs on its "
                       f"parameter names, e.g. {names[0]}, {names[-1]}")
        return out

    def apply(self, model, ctx):
        s = self.spec
        keep_layers = set()
        if s.layers:
            _, layers = decoder_layers(model)
            n = len(layers)
            bad = [i for i in s.layers if not -n <= i < n]
            if bad:
                raise RunError(f"peft.layers {bad} out of range for a model with {n} layers")
            keep_layers = {i % n for i in s.layers}
            owner = layer_of_param(layers)
        hits = 0
        for name, p in model.named_parameters():
            on = any(fnmatch(name, pat) for pat in s.modules) or (s.layers and owner.get(id(p)) in keep_layers)
            p.requires_grad_(bool(on))
            hits += bool(on)
        if not hits:
            raise RunError(f"peft=freeze matched no parameter (modules={s.modules}, layers={s.layers})")
        return model
