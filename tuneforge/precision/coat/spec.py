"""`precision=coat` configuration (a PrecisionSpec: compute/params keep their meaning)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, knob, positive
from tuneforge.precision.modes import PrecisionSpec


@dataclass
class CoatSpec(PrecisionSpec):
    name: str = knob("coat", "precision preset")
    compute: str = knob("auto", "dtype of matmuls in forward/backward (autocast): fp32, bf16, or auto (bf16 where "
                        "the hardware is fast at it, else fp32)")
    optimizer_states: bool = knob(True, "keep AdamW's moments in FP8 (E4M3) with dynamic range expansion")
    expansion: bool = knob(True, "dynamic range expansion of the FP8 moments (false: plain per-group E4M3)")
    group_size: int = knob(128, "elements per quantization group of the optimizer's moments")
    expand_min: int = knob(16, "the expansion exponent k is a multiple of 1/expand_min")
    activations: bool = knob(True, "save activations for backward in FP8: linear inputs per tensor, non-linear "
                             "layers' inputs (SiLU, multiply, RMSNorm) per group")
    activation_group: int = knob(16, "elements per quantization group of the non-linear layers' saved inputs")

    @property
    def caps(self):
        if not self.optimizer_states:
            return Caps()
        return Caps(eight_bit_states=True, client_optimizer=True,
                    partitioned_states="keeps its FP8 optimizer states with one scale per group of each rank's "
                                       "flat ZeRO partition",
                    fix="set precision.optimizer_states=false")

    def frozen_dtype(self, method_caps, zero_stage: int) -> str | None:
        return None  # its linears cast (and compress) the weights themselves

    def problems(self):
        out = super().problems() + positive(self, "group_size", "expand_min", "activation_group")
        if self.compute == "fp16" or self.params == "fp16":
            out.append("precision=coat runs in fp32 or bf16 (compute/params=fp16 is not supported)")
        return out

    def cross_problems(self, specs: dict) -> list[str]:
        o = specs["optim"]
        if self.optimizer_states and o.name != "adamw":
            return [f"precision=coat brings its own optimizer (AdamW with FP8 moments), so optim={o.name} would be "
                    "ignored: use optim=adamw (its lr, betas, eps and weight_decay are used), or set "
                    "precision.optimizer_states=false"]
        return []
