"""Adapter machinery shared by the methods HF PEFT does not have (switchlora, triadaptlora, dsee).

    AdapterLinear          wraps a frozen nn.Linear (kept as `.base`): forward = base(x) + extra(x);
                           a subclass defines extra(x) and delta() (its update in the weight's shape)
    find_targets(m, names) the nn.Linear modules inside the decoder layers whose leaf name is listed,
                           or every one of them for ['all-linear'] (never the LM head or embeddings)
    wrap(m, names, make)   replace each target by make(index, name, linear)
    merge(m, post)         fold every adapter into its base weight (post(W) may prune it) and put the plain
                           nn.Linear back: the result is a plain Hugging Face model (export)
    write(run, p, value, reset)
                           set a trainable parameter's value everywhere the engine keeps it (the weights the
                           forward reads and the optimizer's fp32 master) and zero its Adam moments at index
                           `reset`, leaving every other element of the optimizer state untouched (any ZeRO
                           stage that tuneforge.distributed.optim_state supports; `run=None`: weights only)
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tuneforge.distributed.params import assign
from tuneforge.models.layers import decoder_layers


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

    def forward(self, x):
        return self.base(x) + self.extra(x)


def find_targets(model: nn.Module, names) -> list[tuple[str, nn.Linear]]:
    layers_name, layers = decoder_layers(model)
    every = list(names) == ["all-linear"]
    out = []
    for i, layer in enumerate(layers):
        for n, m in layer.named_modules():
            if isinstance(m, nn.Linear) and (every or n.rsplit(".", 1)[-1] in names):
                out.append((f"{layers_name}.{i}.{n}", m))
    if not out:
        raise ValueError(f"no nn.Linear named {list(names)} inside the decoder layers")
    return out


def _set(model: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, leaf = qualname.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def wrap(model: nn.Module, names, make) -> dict[str, AdapterLinear]:
    out = {}
    for i, (qualname, linear) in enumerate(find_targets(model, names)):
        out[qualname] = make(i, qualname, linear)
        _set(model, qualname, out[qualname])
    return out


def adapters(model: nn.Module) -> dict[str, AdapterLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}


@torch.no_grad()
def merge(model: nn.Module, post=None) -> nn.Module:
    for qualname, ad in adapters(model).items():
        w = ad.base.weight
        merged = w.float() + ad.delta().float()
        w.copy_((post(merged) if post else merged).to(w.dtype))
        _set(model, qualname, ad.base)
    return model


def row_index(dim: int, rows) -> tuple:
    """An index selecting `rows` along dimension `dim` of a 2-D tensor."""
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    return (rows,) if dim == 0 else (slice(None), rows)


@torch.no_grad()
def write(run, p: nn.Parameter, value: torch.Tensor, reset: tuple | None = None) -> bool:
    """Returns whether optimizer state was found (and its `reset` rows zeroed)."""
    from tuneforge.distributed import optim_state as ostate

    assign(p, value)
    engine = getattr(run, "engine", None)
    state = ostate.get(engine, p) if engine is not None else None
    if state is None:
        return False
    if "fp32" in state:
        state["fp32"] = value.to(state["fp32"].dtype).view(state["fp32"].shape)
    if reset is not None:
        for m in ostate.MOMENTS:
            state[m].view(p.shape)[reset] = 0
    ostate.put(engine, p, state)
    return True


def names_matching(model: nn.Module, pattern: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if re.search(pattern, n)}
