"""Which linear layers a method adapts, or a quantizer replaces: one resolver for every method.

    target_linears(model, names)  (qualified name, nn.Linear) of the linears inside the decoder layers that
                                  `names` selects, in model order. ['all-linear'] selects every one of them: HF
                                  PEFT's `all-linear` (every linear but the output head), restricted to the decoder
                                  layers, so never the LM head or the embeddings. Otherwise a name selects the
                                  linears whose qualified name equals it or ends with '.<name>' (HF PEFT's rule):
                                  `q_proj`, `self_attn.q_proj`, `model.layers.0.mlp.up_proj`. No match is an error.
    target_names(model, names)    their qualified names: what PEFT-backed methods pass as `target_modules`, so
                                  PEFT adapts exactly the linears the shape checks saw
    replace(model, qualname, m)   put module m at qualname (the name target_linears gave)

Works on a model built on the meta device from its config (models.shapes: checks before any weight loads), on
a model whose linears are already quantized (bitsandbytes' Linear4bit is an nn.Linear), and through PEFT /
DeepSpeed wrappers (names are those of the unwrapped Hugging Face model).
"""

from __future__ import annotations

from torch import nn

from tuneforge.models.layers import decoder_layers, unwrap

ALL_LINEAR = "all-linear"


def selects(qualname: str, names) -> bool:
    return any(qualname == t or qualname.endswith("." + t) for t in names)


def target_linears(model: nn.Module, names) -> list[tuple[str, nn.Linear]]:
    names = list(names)
    every = names == [ALL_LINEAR]
    layers_name, layers = decoder_layers(model)
    found = [(f"{layers_name}.{i}.{n}", m) for i, layer in enumerate(layers)
             for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    out = found if every else [(q, m) for q, m in found if selects(q, names)]
    if not out:
        leaves = sorted({q.rsplit(".", 1)[-1] for q, _ in found})
        raise ValueError(f"target_modules={names} matches no linear layer inside the decoder layers ({layers_name}); "
                         f"their linears: {', '.join(leaves) or 'none'} (or use [all-linear])")
    return out


def target_names(model: nn.Module, names) -> list[str]:
    return [q for q, _ in target_linears(model, names)]


def replace(model: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, leaf = qualname.rpartition(".")
    base = unwrap(model)
    setattr(base.get_submodule(parent) if parent else base, leaf, module)
