from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, knob, one_of
from tuneforge.precision.modes import PrecisionSpec

RECIPES = ("tensorwise", "rowwise")


@dataclass
class Fp8Spec(PrecisionSpec):
    name: str = knob("fp8", "FP8 linear training (torchao float8 on CUDA compute capability >= 8.9; CPU emulation)")
    recipe: str = knob("tensorwise", "scaling recipe: tensorwise (one dynamic scale per tensor, E4M3 forward, E5M2 "
                       "gradients; fastest) or rowwise (one scale per row, all E4M3, power-of-two scales)")
    emulate: bool = knob(False, "run the pure-torch FP8 emulation (the CPU reference; any device, slower than "
                         "high precision) instead of torchao's FP8 kernels")

    def frozen_dtype(self, method_caps, zero_stage: int) -> str | None:
        return None  # its FP8 linears quantize the fp32 weights themselves

    def problems(self):
        return super().problems() + one_of(self, "recipe", RECIPES)

    @property
    def caps(self):
        if self.emulate:
            return Caps()
        return Caps(fp8_kernels="runs its linears on FP8 tensor cores (torchao float8)",
                    fix="set precision.emulate=true for the pure-torch CPU reference (slow; for tests and checks)")

    def cross_problems(self, specs):
        out, q = [], specs["quant"]
        if specs["zero"].stage == 3:
            out.append(f"precision={self.name} does not support ZeRO-3 (torchao shards FP8 linears only under FSDP2, "
                       "and DeepSpeed's parameter partitioning around them is untested): use zero=zero2 (or "
                       "zero2_offload)")
        if q.caps.quantized_base:
            out.append(f"precision={self.name} with quant={q.name}: the base linears hold {q.caps.quantized_base} "
                       "weights, so none would run in FP8: use quant=none (FP8 trains the full-precision base)")
        return out
