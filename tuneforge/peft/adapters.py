"""Adapter machinery shared by the methods HF PEFT does not have (switchlora, triadaptlora, dsee).

    AdapterLinear          wraps a frozen nn.Linear (kept as `.base`): forward = base(x) + extra(x);
                           a subclass defines extra(x) and delta() (its update in the weight's shape)
    wrap(m, names, make)   replace each target linear (models.targets.target_linears: the ones inside the
                           decoder layers that `names` selects, never the LM head) by make(index, name, linear)
    merge(m)               fold every adapter into its base weight and put the plain
                           nn.Linear back: the result is a plain Hugging Face model (export)
    master(engine, p)      a trainable parameter's full value in fp32: the optimizer's fp32 master where the
                           engine keeps one (bf16/fp16 weights), else the weight itself
    write(engine, p, index, value, reset)
                           set p[index] = value everywhere the engine keeps it (the weights the forward reads
                           and, at `index` only, the optimizer's fp32 master: the other rows of a bf16 model keep
                           their fp32 masters bit for bit) and restart the optimizer state at index `reset`
                           (every per-element state zeroed: Adam moments and, with ElementStepAdamW, the step
                           counts, so those rows take fresh Adam steps), leaving every other element of the
                           optimizer state untouched (any ZeRO stage that tuneforge.distributed.optim_state
                           supports; `engine=None`: weights only)
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tuneforge.distributed.params import assign, gathered
from tuneforge.models.targets import replace, target_linears


class AdapterLinear(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def extra(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self) -> torch.Tensor:
        """The weight `merge` writes into the base, in fp32 (W + delta unless a layer computes it otherwise)."""
        return self.base.weight.float() + self.delta().float()

    def forward(self, x):
        return self.base(x) + self.extra(x)


def wrap(model: nn.Module, names, make) -> dict[str, AdapterLinear]:
    out = {}
    for i, (qualname, linear) in enumerate(target_linears(model, names)):
        out[qualname] = make(i, qualname, linear)
        replace(model, qualname, out[qualname])
    return out


def adapters(model: nn.Module) -> dict[str, AdapterLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    for qualname, ad in adapters(model).items():
        w = ad.base.weight
        w.copy_(ad.merged_weight().to(w.dtype))
        replace(model, qualname, ad.base)
    return model


def row_index(dim: int, rows) -> tuple:
    """An index selecting `rows` along dimension `dim` of a 2-D tensor."""
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    return (rows,) if dim == 0 else (slice(None), rows)


@torch.no_grad()
def master(engine, p: nn.Parameter) -> torch.Tensor:
    """p's full value in fp32 (a copy): the fp32 master where the engine keeps one. `engine`: ctx.engine or None."""
    state = engine.state(p) if engine is not None else None
    if state is not None and "fp32" in state:
        return state["fp32"].view(_shape(p)).clone()
    with gathered(p):
        return p.detach().float().clone()


@torch.no_grad()
def write(engine, p: nn.Parameter, index: tuple | None = None, value: torch.Tensor | None = None,
          reset: tuple | None = None) -> bool:
    """Returns whether optimizer state was found (and its `reset` rows restarted). `engine`: ctx.engine or None;
    `index`/`value`: where p changes and its new values there (fp32 or p's dtype; None: no change)."""
    from tuneforge.distributed.optim_state import elementwise

    shape = _shape(p)
    if index is not None:
        with gathered(p):
            w = p.detach().clone()
        w[index] = value.to(p.dtype)
        assign(p, w)
    state = engine.state(p) if engine is not None else None
    if state is None:
        return False
    if "fp32" in state and index is not None:
        state["fp32"].view(shape)[index] = value.to(state["fp32"].dtype)
    if reset is not None:
        for key in elementwise(state, shape.numel()):
            state[key].view(shape)[reset] = 0
    engine.put_state(p, state)
    return True


def _shape(p: nn.Parameter) -> torch.Size:
    return torch.Size(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 parameter holds a partition


def names_matching(model: nn.Module, pattern: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if re.search(pattern, n)}
