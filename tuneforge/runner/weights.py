"""Named parameters to and from safetensors, ZeRO-3 aware.

Saving gathers each ZeRO-3 partitioned parameter in turn (all ranks take part; rank 0 writes). Loading copies
by name into the parameters of a model rebuilt the way the run built it (load -> quantize -> apply method);
under ZeRO-3 the copy happens inside a gather whose result rank 0 re-partitions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.distributed import dist
from tuneforge.errors import RunError

FILE = "trainable.safetensors"


def _gathered(p: torch.nn.Parameter, modify: bool = False):
    import contextlib

    if hasattr(p, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p], modifier_rank=0 if modify else None)
    return contextlib.nullcontext()


def save_named(lm: torch.nn.Module, path: Path, names: set[str], meta: dict | None = None) -> None:
    state = {}
    for n, p in lm.named_parameters():
        if n in names:
            with _gathered(p):
                state[n] = p.detach().cpu().clone().contiguous()
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={"tuneforge": json.dumps(meta or {})})


def load_named(lm: torch.nn.Module, path: Path, strict_names: set[str] | None = None) -> None:
    if not path.is_file():
        raise RunError(f"{path} not found: the run did not finish (resume it with trainer.resume=auto)")
    state = load_file(str(path))
    params = dict(lm.named_parameters())
    unknown = [n for n in state if n not in params]
    missing = sorted((strict_names or set()) - set(state))
    if unknown or missing:
        raise RunError(f"{path} does not match the rebuilt model: unknown {unknown[:3]}, missing {missing[:3]}")
    for n, t in state.items():
        assign(params[n], t)


def assign(p: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Set a parameter's full value (under ZeRO-3 through a gather that rank 0's copy re-partitions)."""
    with torch.no_grad(), _gathered(p, modify=True):
        p.copy_(value.to(p.dtype).view(p.shape))
