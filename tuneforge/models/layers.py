"""Find a decoder model's list of transformer layers, robustly.

The layer list is the ModuleList inside the text decoder whose length is the text config's
num_hidden_layers. Lists elsewhere (a vision tower's encoder layers, an audio encoder) are never chosen:
the search is restricted to the decoder returned by get_decoder() when the model has one, and an ambiguous
result is an error naming the candidates rather than a guess.
"""

from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside PEFT / DeepSpeed / tuneforge wrappers."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "lm") and isinstance(model.lm, nn.Module):
            model = model.lm
        else:
            return model


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, ModuleList) of the decoder's transformer layers."""
    base = unwrap(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    n = getattr(config, "num_hidden_layers", None)
    root = base.get_decoder() if hasattr(base, "get_decoder") else base
    root_name = next((name for name, m in base.named_modules() if m is root), "")
    cands = [(name, m) for name, m in root.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n)]
    cands = [(f"{root_name}.{name}".strip("."), m) for name, m in cands
             if all(type(x) is type(m[0]) for x in m)]
    if len(cands) > 1:  # keep the outermost lists (a layer may hold inner ModuleLists of the same length)
        cands = [c for c in cands if not any(c[0].startswith(o[0] + ".") for o in cands if o is not c)]
    if len(cands) != 1:
        found = ", ".join(f"{name} ({len(m)})" for name, m in cands) or "none"
        raise ValueError(f"cannot identify the decoder layer list of {type(base).__name__} "
                         f"(num_hidden_layers={n}); candidates: {found}")
    return cands[0]


def layer_of_param(layers: nn.ModuleList) -> dict[int, int]:
    """id(parameter) -> index of the layer that owns it (embeddings, head and final norm are absent)."""
    return {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}


class _Stop(Exception):
    pass


def layer_output(y):
    """A decoder layer's hidden states (some transformers versions return them in a tuple)."""
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def first_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches) -> tuple[list, dict]:
    """The first decoder layer's input hidden states for each batch of input ids (one forward each, stopped
    there), and the layer's other keyword arguments (positions, rotary embeddings, mask: the same for every batch
    of one shape). Calibration of layer-by-layer methods (pruning, Block-AP) starts here."""
    hidden, kwargs = [], {}

    def hook(module, args, kw):
        hidden.append((args[0] if args else kw["hidden_states"]).detach())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for ids in batches:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    return hidden, kwargs
