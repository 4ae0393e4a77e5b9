"""`precision=fp32|bf16|fp16`.

A precision mode is a registered builder with four doors: `autocast(device)` for the forward, `apply(model)`
after the tuning method, `ds_section()` (its part of the DeepSpeed config) and `optimizer(groups, optim)` (the
client optimizer handed to DeepSpeed; by default the `optim` group's own, None when DeepSpeed builds it from
its config). A mode that compresses optimizer states (COAT) returns its own optimizer here. Modes are also
in-training hooks (`tuneforge.hooks`), e.g. for scale bookkeeping.

- auto (the default): bf16 autocast where the hardware is fast at it (tuneforge/hardware.py), else fp32. The
  launching process decides once, before it writes the run directory (`resolve`): `compute` becomes the chosen
  dtype and `chosen` says why, so every rank, every resume and every offline command (`eval`, `export`) reads the
  same decision from the run's config.yaml, and the run's first line prints it.
- fp32: everything in fp32 (the reference).
- bf16: autocast to bf16 for matmuls, fp32 weights, gradients and optimizer (works on CPU; fast only where the
  CPU has AMX/AVX512-BF16 or on GPUs). Set precision.params=bf16 to also store weights in bf16 (DeepSpeed
  bf16 engine: fp32 master weights live in the optimizer).
- fp16: DeepSpeed fp16 engine (fp16 weights, fp32 master, dynamic loss scaling); needs a CUDA device.

Frozen weights in the compute dtype (`frozen_in_compute`, on by default): autocast caches its casts of trainable
leaves only, so it casts every frozen fp32 linear weight again on each forward and keeps that copy for backward.
When a run trains through autocast (compute bf16/fp16, params fp32) with a method whose frozen base is read only by
its layers' own matmuls (`Caps.base_matmul_only`: the LoRA family), `PrecisionSpec.frozen_dtype` says so and:
- building the model (runner/model.py) rounds those weights' values to the compute dtype (`frozen_to`): exactly
  the values autocast's matmuls use, so losses and gradients are bit-identical to the fp32-stored run;
- a training run holds them in the compute dtype (`restore_frozen` after training): no per-forward copy, half
  their bytes; eval and export keep the rounded values in fp32 storage, so the export merges the update into the
  base the run trained against.
Only `nn.Linear` weights (and biases) held by that module alone: a head tied to the embedding stays as it is (the
embedding lookup is not autocast). Not under ZeRO-3 (it partitions the weights at load). A selector that scores
samples with the model outside autocast keeps the rounded weights in fp32 storage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob, one_of
from tuneforge.hooks import Hooks
from tuneforge.registry import register

DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class PrecisionSpec(Spec):
    name: str = knob("fp32", "precision preset")
    compute: str = knob("fp32", "dtype of matmuls in forward/backward (autocast): fp32, bf16, fp16, or auto "
                        "(bf16 where the hardware is fast at it, else fp32; decided when the run starts)")
    params: str = knob("fp32", "dtype weights are stored in; bf16/fp16 keep fp32 master copies in the optimizer")
    loss_scale: float = knob(0.0, "fp16 only: static loss scale, 0 for dynamic")
    initial_scale_power: int = knob(16, "fp16 only: dynamic loss scale starts at 2**this")
    chosen: str = knob("", "written by the run when compute=auto: what it chose and why (not an input)")
    frozen_in_compute: bool = knob(True, "under autocast, store the frozen base's linear weights in the compute "
                                   "dtype (autocast casts them on every forward anyway: same numbers, half their "
                                   "bytes); only for methods that read them through their own matmuls (LoRA family)")

    def problems(self):
        out = one_of(self, "compute", (*DTYPES, "auto")) + one_of(self, "params", DTYPES)
        if self.params == "fp16" and self.compute != "fp16":
            out.append("params=fp16 needs compute=fp16")
        return out

    def frozen_dtype(self, method_caps, zero_stage: int) -> str | None:
        """The dtype the runner stores the frozen base's linear weights in, when it is not `params` (module
        docstring); None: they stay in `params`. Decided from the specs alone (compute already resolved)."""
        if self.frozen_in_compute and method_caps.base_matmul_only and zero_stage < 3 and self.params == "fp32" \
                and self.compute in ("bf16", "fp16"):
            return self.compute
        return None


def resolve(spec: PrecisionSpec, device: str) -> str | None:
    """compute=auto -> the dtype `device` is fast at; returns what was chosen and why (None: not auto)."""
    if spec.compute != "auto":
        return None
    from tuneforge.hardware import fast_bf16

    fast, why = fast_bf16(device)
    spec.compute = "bf16" if fast else "fp32"
    spec.chosen = f"{spec.compute} (auto: {why})"
    return spec.chosen


@register("precision", "auto", config=PrecisionSpec)
@register("precision", "fp32", config=PrecisionSpec)
@register("precision", "bf16", config=PrecisionSpec)
@register("precision", "fp16", config=PrecisionSpec)
class Precision(Hooks):
    owns_optimizer = False  # True: optimizer() builds the optimizer, and the `optim` group's DS section is left out

    def __init__(self, spec: PrecisionSpec):
        self.spec = spec

    def autocast(self, device_type: str):
        resolve(self.spec, device_type)  # compute=auto not yet decided by a run (merge search, a bench): decide here
        if self.spec.compute == "fp32" or self.spec.compute == self.spec.params:
            return contextlib.nullcontext()
        import torch

        from tuneforge.models.load import torch_dtype

        return torch.autocast(device_type=device_type, dtype=torch_dtype(self.spec.compute))

    def apply(self, model):
        return model

    def frozen_to(self, model, dtype: str, store: bool) -> int:
        """Round the frozen linears' values to `dtype` (`PrecisionSpec.frozen_dtype`): kept in fp32 storage
        (store=False: eval, export, a run whose selector scores outside autocast) or stored in `dtype` (training;
        `restore_frozen` after). Returns the elements rounded."""
        import torch

        from tuneforge.models.load import torch_dtype

        weights, low = frozen_linears(model, torch.float32), torch_dtype(dtype)
        for p in weights:  # new tensors: writing into weights mapped from the checkpoint file would copy its pages
            p.data = p.data.to(low) if store else p.data.to(low).float()
        if store:
            # The loader maps the checkpoint file, and the mapping (every page read so far counts in the process's
            # memory) lives while any tensor views it: the other tensors get their own copies, so it goes.
            rounded = {id(p) for p in weights}
            for t in [*model.parameters(), *model.buffers()]:
                if id(t) not in rounded:
                    t.data = t.data.clone()
        return sum(p.numel() for p in weights)

    @staticmethod
    def restore_frozen(model, dtype: str) -> None:
        """Stored frozen linears back to fp32 storage, exactly (for work outside autocast once training is over,
        e.g. the probe)."""
        from tuneforge.models.load import torch_dtype

        for p in frozen_linears(model, torch_dtype(dtype)):
            p.data = p.data.float()

    def ds_section(self) -> dict:
        """DeepSpeed's mixed-precision engine section (pure)."""
        s = self.spec
        if s.params == "bf16":
            return {"bf16": {"enabled": True, "check_grad_overflow": True}}  # skip steps with non-finite gradients
        if s.params == "fp16":
            return {"fp16": {"enabled": True, "loss_scale": s.loss_scale, "initial_scale_power": s.initial_scale_power}}
        return {}

    def optimizer(self, groups: list[dict], optim):
        """The client optimizer for DeepSpeed (`optim`: the built `optim` group option)."""
        return optim.build(groups)


def frozen_linears(model, dtype) -> list:
    """The frozen `dtype` weights and biases of the `nn.Linear` modules that hold them alone (a head tied to the
    embedding is also read by the embedding lookup, which autocast does not cast)."""
    from collections import Counter

    from torch import nn

    holders = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    return [p for m in model.modules() if type(m) is nn.Linear for p in m.parameters(recurse=False)
            if not p.requires_grad and p.dtype == dtype and holders[id(p)] == 1]
