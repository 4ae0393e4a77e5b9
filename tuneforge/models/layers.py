"""Find a decoder model's list of transformer layers, robustly.

The layer list is the ModuleList inside the text decoder whose length is the text config's
num_hidden_layers. Lists elsewhere (a vision tower's encoder layers, an audio encoder) are never chosen:
the search is restricted to the decoder returned by get_decoder() when the model has one, and an ambiguous
result is an error naming the candidates rather than a guess.
"""

from __future__ import annotations

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
