"""Cross-axis checks: combinations of options that cannot work, found before anything loads.

Options never appear here by name. Each spec declares its capabilities as data (`spec.caps`, a frozen
`config.spec.Caps`; a property where they depend on the spec's own values) and this module maps each capability
to the constraints it sets on the other axes, once. Every problem names the keys and the fix. Warnings are
combinations that work but that a user most likely does not want.

Capability (text fields hold the reason or value shown in the message)      constraint it triggers
Tuning methods (peft):
- whole_weights_at_build (why): reads each base weight matrix whole and   no quantized base; no pretrained model
  in full precision when the model is built (quantizers declare it too)   under ZeRO-3 (it loads into partitions)
- whole_weights_in_training (why): its own layers read and write whole    no ZeRO-3 at all; no quantized base
  base weight matrices in every step
- trains_base_weights: the base model's own weights are trained           no quantized base
- needs_quantized_base (the quant option to add)                          needs a quant option with quantized_base
                                                                           whose trained_with names this method;
                                                                           any method without it is refused one
- carries_optimizer_state (when): per-parameter optimizer state moves     8-bit states only at ZeRO-0 with fp32
  across engine rebuilds                                                  weights; no opaque states; no NVMe offload
- writes_optimizer_rows: resets optimizer moments row by row              no 8-bit states; no NVMe offload
- element_steps: Adam bias correction per element (restarted rows take   no optim option that builds its own
  fresh steps; tuneforge's ElementStepAdamW replaces the optim option's)  optimizer (client_optimizer)
- needs_tasks: trains on multi-task data                                  data.tasks must be set
- backbone_without_autograd (why): the frozen model keeps no activations  warning: gradient checkpointing is moot
Data selection: reselects (when): changes the training set during    no data.packing (packs would be rebuilt at
  training                                                                each re-selection: sample counts, epochs
                                                                          and the batch plan stop lining up)
Precision: fp8_kernels (why): matmuls on FP8 kernels                        a CUDA device of compute capability >= 8.9
                                                                          (checked where the run's device is visible)
Quantizers (quant): quantized_base (what the weights become, "4-bit") and trained_with (the method that trains
  such a base, named in the fix); whole_weights_at_build as above.
Optimizers (optim): eight_bit_states (see the peft rows); client_optimizer: built by tuneforge, not DeepSpeed,
  so no ZeRO optimizer offload (it needs DeepSpeed's CPU Adam); opaque_states (why): per-parameter states that
  cannot be copied out and back in (see the peft rows). A precision mode that brings its own optimizer
  declares these too (client_optimizer, eight_bit_states) and then stands for the optimizer in these checks.
- partitioned_states (why): optimizer states quantized per group of   no ZeRO-3, no offload
  each rank's flat ZeRO partition
Any option: needs_cuda (why): refused when the run trains on the CPU. fix, how to drop its demands on its own
  axis (e.g. "set peft.init=random"), offered in the messages of its conflicts beside the fix on the other axis.

Checks that only one option understands (e.g. its own task list against data.tasks) are its
`spec.cross_problems(specs)`, called here for every group.
"""

from __future__ import annotations

import os

from tuneforge.hardware import cpu_flags, fast_bf16, fp8_kernels

ZERO2 = "use zero=zero2 (or zero2_offload)"


def _cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def run_device(specs) -> str:
    """The device a run of these specs trains on: cuda or cpu."""
    want = specs["trainer"].device
    return "cuda" if want == "cuda" or (want == "auto" and _cuda_available()) else "cpu"


def _or(*fixes: str) -> str:
    return ", or ".join(f for f in fixes if f)


def optimizer_owner(specs: dict):
    """(group, spec) of the option that builds the optimizer: a precision mode that brings its own, else optim."""
    p = specs["precision"]
    return ("precision", p) if p.caps.client_optimizer else ("optim", specs["optim"])


def cross_axis_problems(specs: dict) -> list[str]:
    out = []
    p, z = specs["precision"], specs["zero"]
    og, o = optimizer_owner(specs)
    if run_device(specs) == "cpu" and "fp16" in (p.params, p.compute):
        out.append(f"precision={p.name} needs a CUDA device: DeepSpeed's CPU engine has no fp16 path; "
                   "use precision=bf16 or precision=fp32 on CPU")
    device = run_device(specs)
    if p.caps.fp8_kernels and (device == "cpu" or _cuda_available()):  # a CUDA run composed elsewhere: unknown
        has, why = fp8_kernels(device)
        if not has:
            out.append(f"precision={p.name} {p.caps.fp8_kernels}, but {why}: "
                       f"{_or('use a CUDA device of compute capability >= 8.9 (Ada, Hopper)', p.caps.fix)}")
    if device == "cpu":
        out += [f"{g}={s.name} needs a CUDA device ({s.caps.needs_cuda}): run on a GPU (trainer.device=cuda), or "
                f"{s.caps.fix or 'choose another ' + g}" for g, s in specs.items() if getattr(s, "caps", None)
                and s.caps.needs_cuda]
    if z.offload_optimizer != "none" and o.caps.client_optimizer:
        out.append(f"{og}={o.name} cannot run with ZeRO optimizer offload (DeepSpeed offload needs its own CPU "
                   f"Adam): {_or(o.caps.fix, 'a zero preset without offload')}")
    for group, s in specs.items():
        if s.caps.partitioned_states and (z.stage == 3 or z.offload_param != "none"):
            out.append(f"{group}={s.name} {s.caps.partitioned_states}, which ZeRO-3 and ZeRO offload do not keep: "
                       f"use zero=zero2 (or zero0, zero1), or {s.caps.fix}")
    if z.nvme_path and "nvme" in (z.offload_optimizer, z.offload_param) and not os.path.isdir(z.nvme_path):
        out.append(f"zero.nvme_path={z.nvme_path} does not exist: point it at a directory on a fast local disk")
    out += _weights_problems(specs) + _quant_problems(specs) + _optimizer_state_problems(specs)
    if specs["peft"].caps.needs_tasks and not specs["data"].tasks:
        out.append(f"peft={specs['peft'].name} needs multi-task data: set data.task_field=<field> and "
                   "data.tasks=[task1,task2,...] (data=quickstart: data.ops=[+,-] data.tasks=[add,sub])")
    sel = specs.get("selection")
    if sel is not None and sel.caps.reselects and specs["data"].packing:
        out.append(f"selection={sel.name} changes the training samples {sel.caps.reselects}, which packed sequences "
                   "cannot follow (every re-selection would re-pack the data, so sample counts, epochs and the batch "
                   f"plan stop lining up): set data.packing=false{', or ' + sel.caps.fix if sel.caps.fix else ''}")
    for spec in specs.values():
        out += spec.cross_problems(specs)
    return out


def _weights_problems(specs: dict) -> list[str]:
    """Whole, full-precision weight matrices against ZeRO-3 partitions."""
    out, z3 = [], specs["zero"].stage == 3
    pretrained_z3 = z3 and specs["model"].init == "pretrained"
    for group in ("peft", "quant"):
        s = specs[group]
        if s.caps.whole_weights_in_training and z3:
            out.append(f"{group}={s.name} does not support ZeRO-3 ({s.caps.whole_weights_in_training}): "
                       f"{_or(ZERO2, s.caps.fix)}")
        elif s.caps.whole_weights_at_build and pretrained_z3:
            out.append(f"{group}={s.name} with a pretrained model under ZeRO-3: {s.caps.whole_weights_at_build}, but "
                       f"the weights load straight into ZeRO-3 partitions (zero.Init): {_or(ZERO2, s.caps.fix)}")
    return out


def _quant_problems(specs: dict) -> list[str]:
    """A quantized base against what the tuning method does with the base weights."""
    m, q = specs["peft"], specs["quant"]
    mc, qc = m.caps, q.caps
    if not qc.quantized_base:
        if mc.needs_quantized_base:
            return [f"peft={m.name} needs a quantized base: add {mc.needs_quantized_base}, or "
                    f"{mc.fix or 'use another peft method'} (quant={q.name})"]
        return []
    if mc.needs_quantized_base:
        if qc.trained_with == f"peft={m.name}":
            return []
        return [f"peft={m.name} with quant={q.name}: peft={m.name} trains {mc.needs_quantized_base} bases, and "
                f"{qc.quantized_base} quant={q.name} bases are trained with {qc.trained_with}: use "
                f"{mc.needs_quantized_base}, or {qc.trained_with}"]
    trained_with = f"{qc.quantized_base} bases are trained with {qc.trained_with}"
    whole = mc.whole_weights_at_build or mc.whole_weights_in_training
    if whole:
        return [f"peft={m.name} with quant={q.name}: {whole}, but the base holds only {qc.quantized_base} weights: "
                f"use quant=none ({trained_with})"]
    if mc.trains_base_weights:
        return [f"quant={q.name} with peft={m.name}: quantized base weights cannot be trained; use an adapter method "
                f"(e.g. {qc.trained_with}), or quant=none"]
    return [f"quant={q.name} with peft={m.name}: {trained_with}; use {qc.trained_with}, or quant=none"]


def _optimizer_state_problems(specs: dict) -> list[str]:
    """Methods that read or write the optimizer's per-parameter state against 8-bit states and NVMe offload."""
    m, z, p = specs["peft"], specs["zero"], specs["precision"]
    og, o = optimizer_owner(specs)
    nvme, out = "nvme" in (z.offload_optimizer, z.offload_param), []
    if m.caps.carries_optimizer_state:
        when = m.caps.carries_optimizer_state
        if o.caps.eight_bit_states and (z.stage > 0 or p.params != "fp32"):
            out.append(f"peft={m.name} with {og}={o.name} needs zero=zero0 and fp32 weights (8-bit states are "
                       f"carried {when} only as whole per-parameter tensors): {_or(o.caps.fix, 'zero=zero0')}")
        if o.caps.opaque_states:
            out.append(f"peft={m.name} carries optimizer state {when}, which optim={o.name} cannot hand over "
                       f"({o.caps.opaque_states}): {_or(o.caps.fix, 'use another optimizer')}")
        if nvme:
            out.append(f"peft={m.name} cannot carry optimizer state swapped to NVMe {when}: use zero=zero3_offload "
                       "(CPU) or a preset without offload")
    if m.caps.writes_optimizer_rows:
        if o.caps.eight_bit_states:
            out.append(f"peft={m.name} resets Adam moments row by row, which 8-bit block-wise states cannot do: "
                       f"{o.caps.fix or 'use an optimizer with full-precision states'}")
        if nvme:
            out.append(f"peft={m.name} cannot reset optimizer rows swapped to NVMe: use zero=zero2_offload (CPU) or "
                       "zero2")
    if m.caps.element_steps and o.caps.client_optimizer and not (m.caps.writes_optimizer_rows and o.caps.eight_bit_states):
        out.append(f"peft={m.name} needs an Adam step count per element (restarted rows take fresh Adam steps), "
                   f"which {og}={o.name} does not keep: {o.caps.fix or 'use an optimizer that DeepSpeed builds'}")
    return out


def cross_axis_warnings(specs: dict) -> list[str]:
    out = []
    p, m = specs["precision"], specs["peft"]
    if run_device(specs) == "cpu" and "bf16" in (p.compute, p.params) and cpu_flags() is not None \
            and not fast_bf16("cpu")[0]:
        out.append(f"precision={p.name} on a CPU without AMX/AVX512-BF16: bf16 matmuls are emulated and can be "
                   "~100x slower than fp32 here; precision=fp32 is faster on this machine")
    if m.caps.backbone_without_autograd and specs["model"].gradient_checkpointing:
        out.append(f"peft={m.name} with model.gradient_checkpointing=true: {m.caps.backbone_without_autograd}, so "
                   "there is nothing to recompute; set model.gradient_checkpointing=false")
    return out
