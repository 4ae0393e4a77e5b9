"""Build the model a run trains: load -> quantize -> prune -> apply the tuning method -> precision. One function,
used by the runner and by eval/export (which rebuild a finished run's model the same way)."""

from __future__ import annotations

from tuneforge import registry
from tuneforge.models.load import enable_gradient_checkpointing, load_model
from tuneforge.peft.base import MethodContext


def build(specs: dict, tok, ctx: MethodContext, zero3: bool = False):
    """(model, tuning method) for the given specs."""
    quant = registry.build("quant", specs["quant"])
    quant.compute_dtype, quant.ctx = specs["precision"].compute, ctx
    model = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok), load_kwargs=quant.load_kwargs())
    if specs["model"].gradient_checkpointing:
        enable_gradient_checkpointing(model, zero3)
    model = quant.apply(model)
    model = registry.build("prune", specs["prune"]).apply(model, ctx)  # prune=none: unchanged
    method = registry.build("peft", specs["peft"])
    model = registry.build("precision", specs["precision"]).apply(method.apply(model, ctx))
    return model, method
