"""ZeRO-3-aware access to one parameter's full value, for any module that reads or writes weights (methods
resetting rows or folding adapters, checkpoint loading). Without ZeRO-3 a parameter is whole and both helpers
act on it directly; under ZeRO-3 (a parameter with `ds_id`) the value lives in partitions across ranks, so every
rank must call them, in the same order."""

from __future__ import annotations

import contextlib

import torch


def gathered(p: torch.nn.Parameter, modify: bool = False):
    """A context in which `p` holds its full value; with `modify`, rank 0's changes are re-partitioned on exit."""
    if hasattr(p, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([p], modifier_rank=0 if modify else None)
    return contextlib.nullcontext()


def assign(p: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Set a parameter's full value (under ZeRO-3 through a gather that rank 0's copy re-partitions)."""
    with torch.no_grad(), gathered(p, modify=True):
        p.copy_(value.to(p.dtype).view(p.shape))
