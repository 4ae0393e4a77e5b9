"""The trained weights of a finished run: every trainable parameter, gathered to rank 0 (ZeRO-3 shards are
collected one parameter at a time), in safetensors. Eval and export rebuild the model the same way the run
did (load -> quantize -> apply method) and copy these in by name."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.distributed import dist
from tuneforge.errors import RunError

FILE = "trainable.safetensors"


def _full(p: torch.nn.Parameter, zero3: bool) -> torch.Tensor:
    if zero3 and hasattr(p, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.detach().cpu().clone()
    return p.detach().cpu().clone()


def save_trainable(lm: torch.nn.Module, out_dir: Path, zero3: bool, meta: dict) -> None:
    state = {n: _full(p, zero3) for n, p in lm.named_parameters() if p.requires_grad}
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / FILE),
                  metadata={"tuneforge": json.dumps(meta)})


def load_trainable(lm: torch.nn.Module, out_dir: Path) -> None:
    path = out_dir / FILE
    if not path.is_file():
        raise RunError(f"{path} not found: the run did not finish (resume it with trainer.resume=auto)")
    state = load_file(str(path))
    params = dict(lm.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RunError(f"{path} does not match the rebuilt model: {missing[:3]} ... not found")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))
