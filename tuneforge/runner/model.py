"""Build the model a run trains: load -> quantize -> prune -> apply the tuning method -> precision (which may
round a frozen base to the autocast dtype). One function,
used by the runner and by eval/export (which rebuild a finished run's model the same way)."""

from __future__ import annotations

from tuneforge import registry
from tuneforge.config.run import Run
from tuneforge.models.load import enable_gradient_checkpointing, load_model, load_tokenizer
from tuneforge.peft.base import MethodContext
from tuneforge.runner.weights import FILE, load_named


def build(specs: dict, tok, ctx: MethodContext, zero3: bool = False, store_frozen: bool = False):
    """(model, tuning method) for the given specs. `store_frozen` (training): a frozen base rounded to the autocast
    dtype is also stored in it (precision/modes.py)."""
    quant = registry.build("quant", specs["quant"])
    quant.compute_dtype, quant.ctx = specs["precision"].compute, ctx
    model = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok), load_kwargs=quant.load_kwargs())
    if specs["model"].gradient_checkpointing:
        enable_gradient_checkpointing(model, zero3)
    model = quant.apply(model)
    model = registry.build("prune", specs["prune"]).apply(model, ctx)  # prune=none: unchanged
    method = registry.build("peft", specs["peft"])
    precision = registry.build("precision", specs["precision"])
    model = precision.apply(method.apply(model, ctx))
    frozen = specs["precision"].frozen_dtype(specs["peft"].caps, specs["zero"].stage)
    if frozen is not None:  # the frozen base's values as autocast uses them (precision/modes.py)
        precision.frozen_to(model, frozen, store=store_frozen)
    return model, method


def rebuild(run: Run):
    """(specs, tokenizer, model, method) of a finished run: built as the run built it, its trained weights
    (<run_dir>/final/trainable.safetensors) copied in by name, in eval mode."""
    specs = run.specs
    tok = load_tokenizer(specs["model"])
    ctx = MethodContext(seed=specs["trainer"].seed, tokenizer=tok, run_dir=run.run_dir, specs=specs)
    model, method = build(specs, tok, ctx)
    load_named(model, run.run_dir / "final" / FILE)
    model.eval()
    return specs, tok, model, method
