"""A model's parameter shapes from its config alone (the model is built on the meta device: no weights), for the
memory planner (tuneforge/plan/): `parts(config)` counts every parameter and the decoder layers' linear weights.
A tuning method's spec predicts its trainable parameters from these `Parts` (`spec.trainable_estimate(parts)`, in
the method's folder). `SavedForBackward` measures what autograd keeps for backward (bench scripts and tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class Parts:
    embed: int  # input embeddings (and anything held by nn.Embedding modules)
    head: int  # LM head if not tied to the embeddings
    other: int  # final norm and other parameters outside the layers
    per_layer: int  # parameters of one decoder layer
    n_layers: int
    linear_in_out: int  # sum of in + out features over the linear layers of one decoder layer
    linear_weights: int = 0  # elements of the linear layers' weight matrices in one decoder layer
    linear_rows: int = 0  # their output rows (sum of out features)
    sizes: tuple = ()  # elements of every distinct parameter (tuneforge plan: ZeRO-3 persistence, largest tensor)

    @property
    def total(self) -> int:
        return self.embed + self.head + self.other + self.per_layer * self.n_layers


class _SkipInit(TorchFunctionMode):
    """In-place random initialisers do nothing: on the meta device there is nothing to fill, and torch's meta
    decompositions of them take most of the time of building a large model's skeleton."""

    OPS = {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
           "xavier_normal_", "orthogonal_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.OPS and (args or "tensor" in kwargs):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def parts(config) -> Parts:
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.models.layers import decoder_layers, layer_of_param

    with torch.device("meta"), _SkipInit():
        model = AutoModelForCausalLM.from_config(config)
    _, layers = decoder_layers(model)
    owner = layer_of_param(layers)
    head = model.get_output_embeddings()
    embed_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    counts = {"embed": 0, "head": 0, "other": 0}
    for p in model.parameters():  # tied tensors are listed once
        if id(p) not in owner:
            counts["embed" if id(p) in embed_ids else "head" if head is not None and p is head.weight else "other"] += p.numel()
    linears = [m for m in layers[0].modules() if isinstance(m, nn.Linear)]
    return Parts(counts["embed"], counts["head"], counts["other"], sum(p.numel() for p in layers[0].parameters()),
                 len(layers), sum(m.in_features + m.out_features for m in linears),
                 sum(m.weight.numel() for m in linears), sum(m.out_features for m in linears),
                 tuple(p.numel() for p in model.parameters()))


class SavedForBackward:
    """Measured, not predicted: bytes autograd keeps for backward while the block runs (each storage counted once,
    the model's parameters excluded). `with SavedForBackward(model) as saved: loss = ...; then saved.bytes`."""

    def __init__(self, model: nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def _pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params:
            self.seen[ptr] = t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())

