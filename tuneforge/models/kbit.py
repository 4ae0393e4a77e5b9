"""k-bit base weights shared by the quantizers and the methods that train on them (bitsandbytes 4-bit, 8-bit).

    replace_modules(model, make)   replace every module for which make(module) returns a new one; the count
    dequantize_weight(w)           a Params4bit weight back to a dense tensor
    dense_weight(layer)            a linear layer's weight as a dense tensor: dequantized for 4-bit and 8-bit layers
    dequantize(model)              every Linear4bit / Linear8bitLt -> nn.Linear holding its dequantized weight
                                   (fp32), in place
"""

from __future__ import annotations


def replace_modules(model, make) -> int:
    n = 0
    for name, module in list(model.named_modules()):
        new = make(module)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            n += 1
    return n


def dequantize_weight(w):
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(w.data, w.quant_state)


def dense_weight(layer):
    """Linear4bit: its NF4/FP4 weight dequantized; Linear8bitLt: C_W * s_W / 127 (its row scales live on the weight
    until the first forward, then on the layer's state); any other layer: its weight."""
    import bitsandbytes as bnb
    import torch

    w = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return dequantize_weight(w)
    if isinstance(layer, bnb.nn.Linear8bitLt) and w.dtype == torch.int8:
        scb = w.SCB if getattr(w, "SCB", None) is not None else layer.state.SCB
        return bnb.functional.int8_vectorwise_dequant(w.data, scb)
    return w


def dequantize(model):
    import bitsandbytes as bnb
    import torch
    from torch import nn

    def make(m):
        if not isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            return None
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight = nn.Parameter(dense_weight(m).float(), requires_grad=False)
        if m.bias is not None:
            lin.bias = nn.Parameter(m.bias.data.float().clone(), requires_grad=False)
        return lin

    with torch.no_grad():
        replace_modules(model, make)
    model.is_loaded_in_4bit = model.is_loaded_in_8bit = False
    return model
