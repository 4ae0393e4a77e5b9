"""The merge loop: for every parameter of the base model, the inputs' task vectors -> the method's merged vector
-> theta_base + scale x merged (base.py); with merge.search=true the coefficients are chosen on the eval data
first. Writes the merged model (+ tokenizer) and merge_report.json to `out`.

Memory: the base model, and per parameter the T task vectors of that parameter only. A search keeps the merged
vectors and a copy of the base weights besides (two more model-sized copies), so that each point is exactly
theta_base + scale x merged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tuneforge import registry
from tuneforge.errors import InputError
from tuneforge.merge.base import grid, search
from tuneforge.merge.sources import base_problems, open_source
from tuneforge.models.layers import decoder_layers, layer_of_param


def blocks(model: nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> decoder block index, number of blocks); embeddings, head and final norm are absent."""
    _, layers = decoder_layers(model)
    index = layer_of_param(layers)
    return {n: index[id(p)] for n, p in model.named_parameters() if id(p) in index}, len(layers)


@torch.no_grad()
def merge_models(base: nn.Module, base_id: str | None, inputs: list[tuple[Path, str | None]], spec, out: Path,
                 tokenizer=None, evaluate: Callable[[nn.Module], dict] | None = None, log=print,
                 described=None) -> dict:
    """Merge `inputs` -- (exported HF model or LoRA adapter directory of `base`, the base it was tuned from or None:
    unknown / the adapter's own) -- into `base` with `spec`'s method, save the result to `out`, return the report.
    `evaluate(model) -> eval row` is needed for spec.search."""
    sources = []
    for p, tuned_from in inputs:
        try:
            sources.append(open_source(p, tuned_from))
        except FileNotFoundError as e:
            raise InputError([str(e)]) from None
    if len(sources) < 2:
        raise InputError([f"merge needs two or more inputs, got {len(sources)}: tuneforge merge DIR DIR ... out=DIR"])
    shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    problems = base_problems(sources, base.config.to_dict(), shapes)
    if problems:
        raise InputError(problems)
    merger = registry.entry("merge", spec.name).builder(spec)
    block, n_blocks = blocks(base)
    params = dict(base.named_parameters())
    if spec.search and evaluate is None:
        raise InputError(["merge.search=true needs eval data: run it through `tuneforge merge` (data=...)"])
    where = {n: (block.get(n), n_blocks) for n in params}
    coef, records, merged = merger.coefficients(len(sources)), [], {}
    torch.manual_seed(spec.seed)  # DARE's drops (PEFT's random_pruning draws from the global generator)
    for name, p in params.items():
        taus = [s.tau(name, p) for s in sources]
        if all(t is None for t in taus):
            continue
        m = merger.combine(torch.stack([t if t is not None else torch.zeros(p.shape) for t in taus]))
        if spec.search:
            merged[name] = m  # kept for the search; applied below
        else:
            p.add_((merger.scale(coef, where[name]) * m).to(p.dtype))
            merged[name] = None
    if spec.search:
        saved = {n: params[n].detach().clone() for n in merged}

        def at(c):
            for n, m in merged.items():
                params[n].copy_(saved[n] + merger.scale(c, where[n]) * m)
            return evaluate(base)

        coef, records = search([{**coef, **c} for c in grid(merger.space(len(sources)), spec.max_evals)], at, log)
        for n, m in merged.items():
            params[n].copy_(saved[n] + merger.scale(coef, where[n]) * m)
    out.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    report = {"method": spec.name, "knobs": {k: v for k, v in vars(spec).items() if k not in ("name", "inputs")},
              "inputs": described or [{"path": str(s.path), "kind": s.kind} for s in sources],
              "base": base_id, "coefficients": coef, "search": records,
              "merged_tensors": len(merged), "blocks": n_blocks}
    (out / "merge_report.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"merge: {spec.name} of {len(sources)} inputs ({len(merged)} tensors), "
        f"{', '.join(f'{k}={v:g}' for k, v in coef.items())} -> {out}")
    return report
