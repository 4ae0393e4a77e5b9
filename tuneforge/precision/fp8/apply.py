from __future__ import annotations

import collections
import re

from tuneforge.hooks import TrainContext
from tuneforge.precision.fp8.spec import Fp8Spec
from tuneforge.precision.modes import Precision
from tuneforge.registry import register

MULTIPLE = 16  # FP8 GEMMs (cuBLAS / CUTLASS) need both dimensions divisible by 16
FP8_LINEARS = ("Fp8Linear", "Float8Linear")  # the emulation's (layer.py) and torchao's


def plan(model):
    """([(name, linear)] in FP8, {name: why kept}): the plain nn.Linear layers inside the decoder layers (never
    the LM head or the embeddings) whose in and out features are multiples of 16 (and those already converted);
    never an adapter's own linears (the parts of a PEFT tuner layer other than its base layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    from tuneforge.models.targets import ALL_LINEAR, target_linears

    adapters = {id(m) for t in model.modules() if isinstance(t, BaseTunerLayer)
                for m in t.modules() if m is not t.get_base_layer()}
    convert, kept = [], {}
    for name, m in target_linears(model, [ALL_LINEAR]):
        if id(m) in adapters:
            continue
        if type(m).__name__ in FP8_LINEARS:
            convert.append((name, m))
        elif type(m) is not nn.Linear:
            kept[name] = f"a {type(m).__name__}"
        elif m.in_features % MULTIPLE or m.out_features % MULTIPLE:
            kept[name] = f"{m.out_features}x{m.in_features} is not a multiple of {MULTIPLE}"
        else:
            convert.append((name, m))
    return convert, kept


@register("precision", "fp8", config=Fp8Spec)
class Fp8(Precision):
    def apply(self, model):
        import torch
        from torch import nn

        from tuneforge.hardware import fp8_kernels

        s = self.spec
        convert, kept = plan(model)
        # emulate=false reaches here without FP8 kernels only offline (eval/export on CPU): the checks refuse a run
        if not s.emulate and fp8_kernels("cuda" if torch.cuda.is_available() else "cpu")[0]:
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training

            chosen = {id(m) for _, m in convert if type(m) is nn.Linear}
            convert_to_float8_training(model, module_filter_fn=lambda m, _fqn: id(m) in chosen,
                                       config=Float8LinearConfig.from_recipe_name(s.recipe))
        else:
            from tuneforge.precision.fp8.layer import to_fp8

            for _, m in convert:
                if type(m) is nn.Linear:
                    to_fp8(m, s.recipe)
        return model

    def on_train_start(self, ctx: TrainContext) -> None:
        """Say which linears run in FP8, on which path, and which were kept in high precision and why."""
        convert, kept = plan(ctx.model)
        torchao = any(type(m).__name__ == "Float8Linear" for _, m in convert)
        same = collections.Counter((re.sub(r"\.\d+\.", ".<i>.", n), r) for n, r in kept.items())  # per layer: once
        why = "; ".join(f"{n}{f' x{c}' if c > 1 else ''}: {r}" for (n, r), c in same.items())
        ctx.log(f"fp8: {len(convert)} linears in FP8 ({'torchao float8' if torchao else 'emulated'} "
                f"{self.spec.recipe}); the LM head, embeddings and adapters stay in {self.spec.compute}"
                + (f"; {len(kept)} kept ({why})" if kept else ""))
