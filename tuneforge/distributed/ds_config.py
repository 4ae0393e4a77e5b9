"""ds_config(specs, world_size): the DeepSpeed JSON, generated from the zero, precision, optim and trainer
groups by one pure function (no torch, no I/O). A raw JSON given as `deepspeed=<path>` overrides keys."""

from __future__ import annotations

import copy
import json

from tuneforge import registry
from tuneforge.logging import secrets


def _zero_section(z) -> dict:
    out = {
        "stage": z.stage,
        "contiguous_gradients": z.contiguous_gradients,
        "overlap_comm": z.overlap_comm,
        "reduce_bucket_size": z.reduce_bucket_size,
    }
    if z.stage == 3:
        out.update(stage3_prefetch_bucket_size=z.stage3_prefetch_bucket_size,
                   stage3_param_persistence_threshold=z.stage3_param_persistence_threshold,
                   stage3_gather_16bit_weights_on_model_save=False)
    for what, device in (("offload_optimizer", z.offload_optimizer), ("offload_param", z.offload_param)):
        if device != "none":
            out[what] = {"device": device, "pin_memory": False}
            if device == "nvme":
                out[what]["nvme_path"] = z.nvme_path
    return out


def element_steps(specs: dict) -> bool:
    """Whether the tuning method needs Adam step counts per element (its spec's caps): the optimizer is then
    tuneforge's ElementStepAdamW, a client optimizer, and this config has no optimizer section."""
    return "peft" in specs and specs["peft"].caps.element_steps


def ds_config(specs: dict, world_size: int) -> dict:
    t, z, o = specs["trainer"], specs["zero"], specs["optim"]
    cfg = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": _zero_section(z),
        "steps_per_print": 1_000_000_000,  # tuneforge's logger reports progress
        "wall_clock_breakdown": False,
        "seed": t.seed,
    }
    precision = registry.build("precision", specs["precision"])
    cfg.update(precision.ds_section())
    if precision.owns_optimizer:  # e.g. COAT's compressed-state AdamW: a client optimizer DeepSpeed did not build
        cfg["zero_allow_untested_optimizer"] = True
    else:
        optim = registry.build("optim", o, element_steps=element_steps(specs))
        cfg.update(optim.ds_section(offloaded=z.offload_optimizer != "none"))
    if z.offload_optimizer != "none" and "optimizer" not in cfg:
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def run_ds_config(run) -> dict:
    """The DeepSpeed config a run uses (`run`: tuneforge.config.run.Run): generated for its world size (nodes x
    ranks per node), the user's raw JSON merged over, secret-named keys masked."""
    return secrets.redact_json(with_override(ds_config(run.specs, run.world_size), run.cfg.deepspeed))


def with_override(cfg: dict, raw_json_path: str | None) -> dict:
    """Deep-merge a user's raw DeepSpeed JSON over the generated config."""
    if not raw_json_path:
        return cfg
    with open(raw_json_path) as f:
        override = json.load(f)
    out = copy.deepcopy(cfg)
    _merge(out, override)
    return out


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
