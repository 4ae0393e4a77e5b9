"""Named parameters (and buffers) to and from safetensors, ZeRO-3 aware (through distributed.params).

Saving gathers each ZeRO-3 partitioned parameter in turn (all ranks take part; rank 0 writes). Loading copies
by name into the parameters of a model rebuilt the way the run built it (load -> quantize -> apply method);
under ZeRO-3 the copy happens inside a gather whose result rank 0 re-partitions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tuneforge.distributed import dist
from tuneforge.distributed.params import assign, gathered
from tuneforge.errors import RunError

FILE = "trainable.safetensors"


def save_named(lm: torch.nn.Module, path: Path, names: set[str], meta: dict | None = None) -> None:
    state = {}
    for n, p in _tensors(lm):
        if n in names:
            with gathered(p):
                state[n] = p.detach().cpu().clone().contiguous()
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={"tuneforge": json.dumps(meta or {})})


def load_named(lm: torch.nn.Module, path: Path, strict_names: set[str] | None = None) -> None:
    if not path.is_file():
        raise RunError(f"{path} not found: the run did not finish (resume it with trainer.resume=auto)")
    state = load_file(str(path))
    params = dict(_tensors(lm))
    unknown = [n for n in state if n not in params]
    missing = sorted((strict_names or set()) - set(state))
    if unknown or missing:
        raise RunError(f"{path} does not match the rebuilt model: unknown {unknown[:3]}, missing {missing[:3]}")
    for n, t in state.items():
        assign(params[n], t)


def _tensors(lm: torch.nn.Module):
    """Parameters and buffers by name (a method may change buffers in training: SwitchLoRA's candidate pools)."""
    yield from lm.named_parameters()
    yield from lm.named_buffers()
