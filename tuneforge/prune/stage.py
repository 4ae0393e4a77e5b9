"""Run a Pruner over a model, layer by layer, and (as a run's build stage) cache the result.

    run(pruner, model, samples, seed, log, device) -> report
        calibration windows from `samples` (token id lists) -> the first decoder layer's inputs -> for each decoder
        layer: its target linears' input statistics on the current inputs (forward hooks), each linear pruned,
        then the pruned layer's outputs become the next layer's inputs (Wanda's and SparseGPT's sequential
        calibration). One decoder layer at a time moves to `device` (a CUDA run prunes on its GPU).
    apply(pruner, model, ctx)
        the build stage: rank 0 prunes with the run's training samples and saves the pruned weights and the report
        in <run_dir>/prune/<fingerprint>/; every other rank, and any later rebuild (resume, eval, export), loads
        them from there.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import InputError
from tuneforge.models.layers import decoder_layers, first_layer_inputs, unwrap
from tuneforge.models.targets import target_linears
from tuneforge.prune import cache_dir, calib, report

WEIGHTS, REPORT = "pruned.safetensors", "report.json"


def _to(x, dev):
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    return type(x)(_to(v, dev) for v in x) if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def run(pruner, model: nn.Module, samples: list, seed: int = 0, log=None, device: str | None = None) -> dict:
    spec, say = pruner.spec, log or (lambda *_: None)
    try:
        targets = target_linears(model, spec.target_modules)
    except ValueError as e:
        raise InputError([f"prune.{e.args[0]}"]) from None
    layers_name, layers = decoder_layers(model)
    wins = calib.windows(samples, spec.n_samples, spec.seqlen, seed)
    if pruner.needs_data and len(wins) == 0:
        raise InputError([f"prune={spec.name} calibrates on windows of prune.seqlen={spec.seqlen} tokens, and the "
                          f"data holds {sum(map(len, samples))} tokens: lower prune.seqlen or add data"])
    home = next(model.parameters()).device
    dev = torch.device(device) if device else home
    say(f"prune: {spec.name}, {spec.sparsity:.0%} {spec.pattern} (scope {spec.scope}) of {len(targets)} linears, "
        f"{len(wins)} calibration windows of {spec.seqlen} tokens"
        + (f" (prune.n_samples={spec.n_samples}: the data holds no more)" if len(wins) < spec.n_samples else ""))
    was_training = model.training
    model.eval()
    inputs, kwargs = first_layer_inputs(model, layers, [w[None] for w in wins]) if len(wins) else ([], {})
    inputs, kwargs = [x.to(dev) for x in inputs], _to(kwargs, dev)
    rows, t0 = [], time.time()
    for i, layer in enumerate(layers):
        prefix = f"{layers_name}.{i}."
        linears = {q[len(prefix):]: m for q, m in targets if q.startswith(prefix)}
        layer.to(dev)
        stats = calib.collect(layer, linears, inputs, kwargs) if inputs else dict.fromkeys(linears)
        for n, m in linears.items():
            w = m.weight.detach().float().clone()
            w_hat, mask, before = pruner.prune(w, stats[n], prefix + n)
            w_hat = w_hat.masked_fill(mask, 0)
            m.weight.copy_(w_hat.to(m.weight.dtype))
            rows.append(report.row(prefix + n, w, w_hat, before, stats[n]))
        del stats
        if inputs and i + 1 < len(layers):
            inputs = calib.forward(layer, inputs, kwargs)
        layer.to(home)
        say(f"prune: layer {i + 1}/{len(layers)} ({len(linears)} linears, {time.time() - t0:.0f}s)")
    model.train(was_training)
    return report.summary(rows, spec)


def save(model: nn.Module, rep: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    base = unwrap(model)
    state = {r["layer"]: base.get_submodule(r["layer"]).weight.detach().cpu().contiguous() for r in rep["layers"]}
    save_file(state, str(out / WEIGHTS))
    report.write(rep, out / REPORT)


@torch.no_grad()
def load(model: nn.Module, out: Path) -> None:
    from safetensors.torch import load_file

    base = unwrap(model)
    for name, w in load_file(str(out / WEIGHTS)).items():
        base.get_submodule(name).weight.copy_(w)


def apply(pruner, model: nn.Module, ctx) -> nn.Module:
    from tuneforge.config.checks import run_device
    from tuneforge.distributed import dist

    spec, specs = pruner.spec, getattr(ctx, "specs", None) or {}
    seed, log = getattr(ctx, "seed", 0), getattr(ctx, "log", None) or (lambda *_: None)
    cache = cache_dir(getattr(ctx, "run_dir", None), spec, specs, seed)
    # rank 0's view, taken before it writes: every rank takes the same branch
    if cache is not None and dist.broadcast_object((cache / REPORT).is_file()):
        load(model, cache)
        log(f"prune: pruned weights from {cache}")
        return model
    if dist.is_main() or cache is None:
        samples = [x.input_ids for x in getattr(ctx, "train_samples", None) or []]
        if not samples and pruner.needs_data:
            raise InputError([f"prune={spec.name}: no pruned weights saved for these settings in {cache} and no "
                              "calibration samples (eval/export rebuild a finished run from its saved pruned "
                              "weights): train the run first, with the same prune settings"])
        device = "cuda" if "trainer" in specs and run_device(specs) == "cuda" else None
        rep = run(pruner, model, samples, seed, log, device)
        log(report.table(rep))
        if cache is not None:
            save(model, rep, cache)
    dist.barrier()
    if cache is not None and not dist.is_main():
        load(model, cache)
    return model
