"""`gptq`: a quant=efficientqat model packed into a GPTQ checkpoint (int32 qweight/qzeros, fp16 scales, sym=False,
desc_act=False, its quantization_config in config.json): the format GPTQModel, AutoGPTQ and transformers load on
GPU, and tuneforge.quant.efficientqat.gptq.load_gptq on CPU. It takes the trained model (export=[gptq]): its
integer weights and trained step sizes as they are, nothing merged. The format: quant/efficientqat/gptq.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tuneforge.config.spec import Spec, knob, one_of
from tuneforge.errors import InputError
from tuneforge.export.base import Stage
from tuneforge.models.groupwise import layers
from tuneforge.models.layers import unwrap
from tuneforge.quant.efficientqat.gptq import FORMATS, save_gptq
from tuneforge.registry import register


@dataclass
class GptqSpec(Spec):
    takes: ClassVar[str] = "trained"
    format: str = knob("gptq_v2", "checkpoint_format: gptq_v2 (zero points as they are; the reference's) or gptq "
                                  "(v1: stores z - 1, so it refuses a zero point of 0)")

    def problems(self):
        return one_of(self, "format", FORMATS)


@register("export", "gptq", config=GptqSpec)
class Gptq(Stage):
    def run(self, model, ctx):
        base = unwrap(model)
        if not layers(base):
            raise InputError([f"export stage gptq packs integer weights, and this run's base has none "
                              f"(quant={ctx.specs['quant'].name}): train with quant=efficientqat, or use "
                              "export=[merge]"])
        if ctx.out is None:
            return None
        try:
            qc = save_gptq(base, ctx.out, self.spec.format)
        except ValueError as e:
            raise InputError([f"export.gptq: {e}"]) from None
        ctx.say(f"gptq: {len(layers(base))} linears packed, {qc['bits']}-bit groups of {qc['group_size']} "
                f"({qc['checkpoint_format']}) -> {ctx.out}")
        return None
