"""Predicted memory of a run per rank, from the model's config alone (the model is built on the meta device:
shapes, no weights). Used by `tuneforge show` to put the chosen tuning method beside baselines the caller names.

The method's spec predicts its trainable parameters from the model's `Parts` (`spec.trainable_estimate(parts)`,
in the method's folder); a method that declares no estimate gets no row.

Per trainable parameter: the optimizer's moments (`optim` spec's `state_bytes()`: 8 B for AdamW's two fp32
moments, about 2 B for 8-bit ones, 1 B for 4-bit ones), plus a 4 B fp32 master copy when the engine keeps one
(ZeRO >= 1, or weights stored in bf16/fp16), plus its gradient (4 B, or 2 B for half-precision weights at
ZeRO-0). Weights: every parameter in the training dtype (4 B, 2 B for bf16/fp16), except that a quantized base
stores the linear weights of its decoder layers as the `quant` spec's `weight_bytes(numel, rows)` says (codes and
scales); a tuning method that does not train base weights adds its own (adapter) parameters in the training
dtype. ZeRO divides optimizer states over ranks from stage 1, gradients from stage 2, weights at stage 3.
Activations are not included (they depend on batch, sequence length and checkpointing), nor are the few small
tensors that low-bit optimizers keep in fp32.
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


def per_rank_bytes(p: Parts, n_trainable: int, zero_stage: int, world: int, half_weights: bool,
                   state_bytes: float = 8.0, quantized=None, adapter: bool = False) -> dict[str, float]:
    """`quantized(numel, rows)`: bytes of one quantized linear weight (None: no quantized base); `adapter`: the
    trainable parameters are added to the model (not base weights)."""
    dtype = 2 if half_weights else 4
    master = 4 if (zero_stage >= 1 or half_weights) else 0
    optim = n_trainable * (state_bytes + master) / (world if zero_stage >= 1 else 1)
    grads = n_trainable * (2 if half_weights and zero_stage == 0 else 4) / (world if zero_stage >= 2 else 1)
    weights = p.total * dtype
    if quantized is not None:
        weights += p.n_layers * (quantized(p.linear_weights, p.linear_rows) - p.linear_weights * dtype)
    weights = (weights + (n_trainable * dtype if adapter else 0)) / (world if zero_stage == 3 else 1)
    return {"optimizer": optim, "gradients": grads, "weights": weights, "total": optim + grads + weights}


def table(config, specs: dict, world: int, baselines: list) -> list[dict]:
    """Rows for the baselines (tuning-method specs with their defaults), the chosen method taking the place of the
    baseline of its name or coming last; only estimable methods get a row."""
    p = parts(config)
    z, half = specs["zero"].stage, specs["precision"].params != "fp32"
    state, q = specs["optim"].state_bytes(), specs["quant"]
    chosen = specs["peft"]
    mine = chosen.trainable_estimate(p)
    rows = [chosen if b.name == chosen.name and mine else b for b in baselines]
    if mine and not any(s is chosen for s in rows):
        rows.append(chosen)
    out = []
    for spec in rows:
        estimate = spec.trainable_estimate(p)
        if estimate is None:
            continue
        label, n = estimate
        base = spec.caps.trains_base_weights  # such a row trains an unquantized base (a quantized one is refused)
        quantized = None if base or q.weight_bytes(1, 1) is None else q.weight_bytes
        out.append({"method": label, "chosen": spec is chosen, "trainable": n, "total_params": p.total,
                    **per_rank_bytes(p, n, z, world, half, state, quantized, adapter=not base)})
    return out


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

