"""Cross-axis checks: combinations of options that cannot work, found before anything loads.

Each check takes the built specs and returns problems (each naming the fix). Warnings are combinations that
work but that a user most likely does not want.
"""

from __future__ import annotations

import os


def _cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _device(specs) -> str:
    want = specs["trainer"].device
    return "cuda" if want == "cuda" or (want == "auto" and _cuda_available()) else "cpu"


def cross_axis_problems(specs: dict) -> list[str]:
    out = []
    p, z, o = specs["precision"], specs["zero"], specs["optim"]
    device = _device(specs)
    if device == "cpu" and "fp16" in (p.params, p.compute):
        out.append(f"precision={p.name} needs a CUDA device: DeepSpeed's CPU engine has no fp16 path; "
                   "use precision=bf16 or precision=fp32 on CPU")
    if z.offload_optimizer != "none" and o.name == "adamw8bit":
        out.append("optim=adamw8bit cannot run with ZeRO optimizer offload (DeepSpeed offload needs its own CPU Adam): "
                   "use optim=adamw, or a zero preset without offload")
    if z.nvme_path and "nvme" in (z.offload_optimizer, z.offload_param) and not os.path.isdir(z.nvme_path):
        out.append(f"zero.nvme_path={z.nvme_path} does not exist: point it at a directory on a fast local disk")
    if specs["peft"].name == "lisa":
        out += _lisa_problems(specs)
    if specs["peft"].name == "corda" and z.stage == 3:
        out.append("peft=corda with ZeRO-3: the decomposition needs each full weight matrix when the model is built, "
                   "and ZeRO-3 partitions weights as they load; use zero=zero2 (or zero2_offload)")
    if specs["quant"].name != "none" and specs["peft"].name == "corda":
        out.append(f"peft=corda with quant={specs['quant'].name}: CorDA decomposes full-precision weights (PEFT refuses "
                   "quantized ones); use quant=none")
    if specs["peft"].name == "mtlora":
        out += mtlora_problems(specs["peft"].tasks, specs["data"].tasks)
    if specs["peft"].name in OWN_ADAPTERS:
        out += _own_adapter_problems(specs)
    if specs["peft"].name == "lst" and specs["peft"].init == "pruned" and (
            specs["quant"].name != "none" or (z.stage == 3 and specs["model"].init == "pretrained")):
        out.append("peft=lst with peft.init=pruned reads the backbone's full-precision weights at start, but "
                   f"{'quant=' + specs['quant'].name if specs['quant'].name != 'none' else 'ZeRO-3'} leaves only "
                   "quantized or partitioned ones: set peft.init=random")
    if specs["quant"].name != "none" and specs["peft"].name == "full":
        out.append(f"quant={specs['quant'].name} with peft=full: quantized base weights cannot be trained; "
                   "use an adapter method (e.g. peft=lora)")
    return out + _nf4_problems(specs)


def _nf4_problems(specs: dict) -> list[str]:
    """QLoRA = peft=qlora on quant=nf4; a pretrained base cannot be quantized inside ZeRO-3 partitions."""
    q, peft, out = specs["quant"].name, specs["peft"].name, []
    if peft == "qlora" and q != "nf4":
        out.append(f"peft=qlora needs a 4-bit base: add quant=nf4 (the qlora recipes set it), or use peft=lora "
                   f"(quant={q})")
    if q == "nf4" and peft not in ("qlora", "full"):
        out.append(f"quant=nf4 with peft={peft}: 4-bit bases are trained with peft=qlora (LoRA prepared for k-bit "
                   "training, exported dequantized); use peft=qlora, or quant=none")
    if q == "nf4" and specs["zero"].stage == 3 and specs["model"].init == "pretrained":
        out.append("quant=nf4 with a pretrained model under ZeRO-3: its weights load straight into ZeRO-3 partitions "
                   "(zero.Init), which cannot be quantized layer by layer; use zero=zero2 (or zero0/zero1)")
    return out


def _lisa_problems(specs: dict) -> list[str]:
    """LISA rebuilds the engine at each switch and carries Adam state per parameter (optim_state)."""
    z, p, o = specs["zero"], specs["precision"], specs["optim"]
    out = []
    if o.name == "adamw8bit" and (z.stage > 0 or p.params != "fp32"):
        out.append("peft=lisa with optim=adamw8bit needs zero=zero0 and fp32 weights (8-bit states are carried across "
                   "layer switches only as whole per-parameter tensors): use optim=adamw, or zero=zero0")
    if "nvme" in (z.offload_optimizer, z.offload_param):
        out.append("peft=lisa cannot carry optimizer state swapped to NVMe across layer switches: use zero=zero3_offload "
                   "(CPU) or a preset without offload")
    return out


OWN_ADAPTERS = ("switchlora", "triadaptlora", "dsee")  # tuneforge's own adapter layers (tuneforge/peft/adapters.py)


def _own_adapter_problems(specs: dict) -> list[str]:
    """Own adapters wrap plain nn.Linear weights, read them whole (SwitchLoRA also writes W0), and SwitchLoRA /
    TriAdaptLoRA reset Adam rows through optim_state."""
    name, z, o, q = specs["peft"].name, specs["zero"], specs["optim"], specs["quant"]
    out = []
    if z.stage == 3:
        out.append(f"peft={name} does not support ZeRO-3 (its layers read and write whole weight matrices): "
                   "use zero=zero2 (or zero2_offload)")
    if q.name != "none":
        out.append(f"peft={name} needs unquantized nn.Linear base weights: use quant=none (or peft=lora for QLoRA)")
    if name in ("switchlora", "triadaptlora") and o.name == "adamw8bit":
        out.append(f"peft={name} resets Adam moments row by row, which 8-bit block-wise states cannot do: use optim=adamw")
    if name in ("switchlora", "triadaptlora") and "nvme" in (z.offload_optimizer, z.offload_param):
        out.append(f"peft={name} cannot reset optimizer rows swapped to NVMe: use zero=zero2_offload (CPU) or zero2")
    return out


def cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True  # unknown platform: do not warn
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cross_axis_warnings(specs: dict) -> list[str]:
    out = []
    p = specs["precision"]
    if _device(specs) == "cpu" and "bf16" in (p.compute, p.params) and not cpu_has_fast_bf16():
        out.append(f"precision={p.name} on a CPU without AMX/AVX512-BF16: bf16 matmuls are emulated and can be "
                   "~100x slower than fp32 here; precision=fp32 is faster on this machine")
    if specs["peft"].name == "lst" and specs["model"].gradient_checkpointing:
        out.append("peft=lst with model.gradient_checkpointing=true: LST's backbone runs without autograd and keeps no "
                   "activations, so there is nothing to recompute; set model.gradient_checkpointing=false")
    return out


def mtlora_problems(peft_tasks: list, data_tasks: list) -> list[str]:
    if not data_tasks:
        return ["peft=mtlora needs multi-task data: set data.task_field=<field> and data.tasks=[task1,task2,...] "
                "(data=quickstart: data.ops=[+,-] data.tasks=[add,sub])"]
    if peft_tasks and list(peft_tasks) != list(data_tasks):
        return [f"peft.tasks={list(peft_tasks)} differs from data.tasks={list(data_tasks)}: one task module per data "
                "task, in the same order; drop peft.tasks (it follows data.tasks)"]
    return []
