"""Block-AP (EfficientQAT Sec. 3.2): each decoder layer in turn, its weights, step sizes and zero points trained
to minimise || F(W, X_fp) - F(W^, X_q) ||^2, the MSE between the full-precision block on full-precision inputs
and the quantized block on the outputs of the blocks quantized before it (quantize/block_ap.py of the
reference).

    windows(samples, spec, seed)       calibration and validation windows: the run's tokenized samples, shuffled,
                                       concatenated and cut into `seqlen`-token windows
    run(model, spec, windows, cache)   Block-AP over every decoder layer, in place; each finished block is saved in
                                       `cache` (a folder) and reused from there, so an interrupted calibration
                                       resumes at the first block not yet saved
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

from tuneforge.models.kbit import replace_modules
from tuneforge.models.layers import decoder_layers, first_layer_inputs, layer_output
from tuneforge.quant.efficientqat.quantizer import FakeQuantLinear


def windows(samples: list[list[int]], spec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train [n, seqlen], val [m, seqlen]) token windows, n and m multiples of batch_size, at most
    spec.samples and spec.val_samples: the shuffled samples' tokens end to end, cut into consecutive windows
    (validation from the end of the stream). Fewer tokens than asked for give fewer windows, validation first."""
    pool = list(samples)
    random.Random(seed).shuffle(pool)
    stream = torch.tensor([t for ids in pool for t in ids], dtype=torch.long)
    have, b = len(stream) // spec.seqlen, spec.batch_size
    n_val = min(spec.val_samples, (have // 4) // b * b)
    n = min(spec.samples, (have - n_val) // b * b)
    cut = stream[: have * spec.seqlen].view(have, spec.seqlen)
    return cut[:n], cut[have - n_val:] if n_val else cut[:0]


def fake_quant_block(layer: nn.Module, spec) -> nn.Module:
    """A copy of the layer whose linears are FakeQuantLinear (max-min init)."""
    q = copy.deepcopy(layer)
    replace_modules(q, lambda m: FakeQuantLinear(m, spec.bits, spec.group_size) if type(m) is nn.Linear else None)
    return q


def frozen(q: nn.Module) -> nn.Module:
    replace_modules(q, lambda m: m.freeze() if isinstance(m, FakeQuantLinear) else None)
    q.requires_grad_(False)
    return q


def cosine(lr: float, floor: float, t: int, total: int) -> float:
    """The reference's CosineAnnealingLR(T_max=total, eta_min=floor) at iteration t, in closed form."""
    return floor + (lr - floor) * (1 + math.cos(math.pi * t / max(total, 1))) / 2


def train_block(q: nn.Module, fp_out: list, q_in: list, val: tuple[list, list], kwargs: dict, spec, say,
                load=lambda x: x) -> None:
    """Block-AP on one block: AdamW (weight decay 0) on two groups -- step sizes and zero points at quant_lr,
    every other parameter named `weight` (the linears' weights and the norms': the reference's selection) at
    weight_lr -- each on its own cosine schedule down to lr / min_lr_factor, one step per batch."""
    quant = [p for n, p in q.named_parameters() if n.endswith((".scale", ".zero_point"))]
    weights = [p for n, p in q.named_parameters() if "weight" in n] if spec.weight_lr_value > 0 else []
    q.requires_grad_(False)
    for p in quant + weights:
        p.requires_grad_(True)
    groups = [{"params": quant, "lr": spec.quant_lr, "base": spec.quant_lr}]
    if weights:
        groups.append({"params": weights, "lr": spec.weight_lr_value, "base": spec.weight_lr_value})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    total, t = spec.epochs * len(q_in), 0
    mse = nn.functional.mse_loss
    for epoch in range(spec.epochs):
        losses = []
        for x, y in zip(q_in, fp_out):
            loss = mse(layer_output(q(load(x), **kwargs)), load(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(quant + weights, spec.clip_grad)
            opt.step()
            t += 1
            for g in opt.param_groups:
                g["lr"] = cosine(g["base"], g["base"] / spec.min_lr_factor, t, total)
            losses.append(loss.item())
        say(f"epoch {epoch + 1}/{spec.epochs}: recon loss {sum(losses[-64:]) / len(losses[-64:]):.3e}"
            + (f", val {recon(q, *val, kwargs, load):.3e}" if val[0] else ""))
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def recon(q: nn.Module, q_in: list, fp_out: list, kwargs: dict, load=lambda x: x) -> float:
    return sum(nn.functional.mse_loss(layer_output(q(load(x), **kwargs)), load(y)).item()
               for x, y in zip(q_in, fp_out)) / len(q_in)


def block_file(cache: Path | None, i: int) -> Path | None:
    return cache / f"block_{i}.safetensors" if cache is not None else None


def cached(model: nn.Module, spec, cache: Path | None) -> bool:
    """Whether every block of the model has been saved in `cache`."""
    n = len(decoder_layers(model)[1])
    return cache is not None and all(block_file(cache, i).is_file() for i in range(n))


def load_block(layer: nn.Module, spec, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    q = frozen(fake_quant_block(layer, spec))
    q.load_state_dict(load_file(str(path)), strict=True)
    return q


def _to(x, dev):
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    return type(x)(_to(v, dev) for v in x) if isinstance(x, (tuple, list)) else x


def run(model: nn.Module, spec, train: torch.Tensor, val: torch.Tensor, cache: Path | None, log=None,
        device: str | None = None) -> nn.Module:
    """Block-AP over every decoder layer of `model`, in place (each nn.Linear inside them becomes a
    GroupQuantLinear); returns the model. `train`/`val`: token windows [n, seqlen]. Each block trains on
    `device` (default: the model's) and goes back to the model's device; the blocks' inputs and targets are kept
    on the model's device in `spec.store` precision and computed with in fp32."""
    from safetensors.torch import save_file

    say = log or (lambda *_: None)
    _, layers = decoder_layers(model)
    was_training = model.training
    model.eval()
    home = next(model.parameters()).device
    dev = torch.device(device) if device else home
    store = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.store]

    def load(x):
        return x.to(dev, torch.float32)

    def keep(x):
        return x.detach().to(home, store)
    b = spec.batch_size
    batches = [w.to(home) for w in train.split(b)]
    vbatches = [w.to(home) for w in val.split(b)] if len(val) else []
    say(f"efficientqat: Block-AP, {spec.bits}-bit groups of {spec.group_size}, {len(train)} calibration windows "
        f"of {train.shape[1]} tokens (+{len(val)} validation), {spec.epochs} epochs per block, "
        f"{len(layers)} blocks")
    fp_in, kwargs = first_layer_inputs(model, layers, batches + vbatches)
    fp_in, kwargs = [keep(x) for x in fp_in], _to(kwargs, dev)
    q_in = [x.clone() for x in fp_in]
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for i, layer in enumerate(layers):
        layer.to(dev)
        with torch.no_grad():  # targets: the full-precision block on full-precision inputs (next block's inputs)
            fp_in = [keep(layer_output(layer(load(x), **kwargs))) for x in fp_in]
        path = block_file(cache, i)
        if path is not None and path.is_file():
            q = load_block(layer, spec, path)
            note = f"from cache {path.name}"
        else:
            q = fake_quant_block(layer, spec)
            n = len(batches)
            rtn = recon(q, q_in[:n], fp_in[:n], kwargs, load)
            if spec.epochs > 0:
                train_block(q, fp_in[:n], q_in[:n], (q_in[n:], fp_in[n:]), kwargs, spec,
                            lambda text, i=i: say(f"efficientqat: block {i + 1}/{len(layers)} {text}"), load)
            q = frozen(q)
            note = f"recon loss {rtn:.3e} (round-to-nearest) -> {recon(q, q_in[:n], fp_in[:n], kwargs, load):.3e}"
            if path is not None:
                save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(path))
        q.to(dev)
        with torch.no_grad():
            q_in = [keep(layer_output(q(load(x), **kwargs))) for x in q_in]
        layers[i] = q.to(home)
        say(f"efficientqat: block {i + 1}/{len(layers)}: {note} ({time.time() - t0:.0f}s)")
    model.train(was_training)
    return model


def load(model: nn.Module, spec, cache: Path) -> nn.Module:
    """Every block from the cache (no calibration): the model as `run` left it."""
    _, layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        layers[i] = load_block(layer, spec, block_file(cache, i))
    return model
