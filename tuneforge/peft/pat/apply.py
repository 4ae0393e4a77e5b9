"""`peft=pat`: PAT, Pruning-Aware Tuning (Liu, Yang, Chen, Zhang, Wang, Du & Du, "PAT: Pruning-Aware Tuning for
Large Language Models", AAAI 2025, arXiv 2408.14721). No package implements it; this is tuneforge's own code, written
from the paper's description (abstract and method: hybrid sparsification modules, a unified trainable mask, the
identity loss). The authors' code (github.com/kriskrisliu/PAT, `--ft_mode dimdown --trainable_mask --identity_loss`,
built on modified transformers/peft) was not available to read here beyond its README: the mask's parametrisation
and schedule below are tuneforge's reading of the paper, not a port.

PAT removes hidden channels of the residual stream (the model's width; the reference's `dimdown_dim` 3072 of
Llama-2-7B's 4096 is 25%) while it fine-tunes:

    HSM        y = M ⊙ (z + W_up W_down z)   on the output z of every linear that writes the residual stream
               (o_proj, down_proj; the embedding output gets y = M ⊙ z); W_down r x d (orthonormal rows at start),
               W_up d x r zero-initialised, so an HSM starts as M ⊙ z
    mask       one trainable vector over the d hidden channels, shared by every HSM (the unified mask):
               M = sigmoid(m / T), T annealed geometrically from `temperature_start` to `temperature_end` over the
               first `freeze_at` (80%) of the steps; then frozen: M = 1 at the `keep` largest m, 0 elsewhere, and the
               remaining steps train the HSMs under that binary mask
    identity   L_id = MSE(W_down W_downᵀ, I_r) per HSM, added with weight `identity_weight` to the task loss (it keeps
    loss       W_down a rotation so that M, not W_down, does the scaling)

With M binary the residual stream is exactly zero on the removed channels (every writer is masked), so the model
shrinks exactly (`merged`, the export):
  - each HSM folds into its linear: W' = diag(M) (I + W_up W_down) W, b' likewise, and keeps only the kept rows;
  - every linear that reads the residual (q, k, v, gate, up, the LM head) keeps only the kept input columns; the
    embedding keeps the kept columns (a tied head stays tied);
  - RMSNorm averages over d channels of which d - keep are zero: with s = keep / d,
    x / sqrt(s·mean_kept(x²) + eps) = x / (sqrt(s) sqrt(mean_kept(x²) + eps / s)), so each norm's weight becomes
    g[kept] / sqrt(s) and `rms_norm_eps` becomes eps / s: the narrow model computes the same function;
  - the config says hidden_size = keep with head_dim kept explicit (attention widths do not change).
The export loads in plain transformers (no modified library).

Departures and choices, and why:
  - The mask's parametrisation (sigmoid of logits over a temperature, `init_logit` 3 so M starts at 0.95, top-k
    binarisation at the freeze) is tuneforge's; the paper's own annealing formula could not be checked.
  - The identity loss enters as a gradient hook on each W_down (the loss depends on parameters only, not data), scaled
    by 1 / grad_accum so that the step's gradient carries it once (DeepSpeed averages the micro-batches' gradients).
  - Only the HSMs and the mask train (no LoRA beside them).
  - Llama-family decoders only (llama, mistral, qwen2: RMSNorm, explicit head_dim); others are refused before loading.
  - A run that ends before the freeze is binarised by top-k at export (the function then changes; logged).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuneforge.models.layers import unwrap
from tuneforge.models.targets import replace, target_linears
from tuneforge.peft.adapters import adapters, wrap
from tuneforge.peft.base import TuningMethod, trainable
from tuneforge.peft.pat.layer import Hsm, SharedMask
from tuneforge.peft.pat.spec import FAMILIES, PatSpec
from tuneforge.registry import register

WRITERS = ["o_proj", "down_proj"]


@register("peft", "pat", config=PatSpec)
class Pat(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        cfg = shape.config
        if cfg.model_type not in FAMILIES:
            return [f"peft=pat rewrites the hidden width of {', '.join(FAMILIES)} decoders; this model is "
                    f"{cfg.model_type}: use another peft option"]
        d = cfg.hidden_size
        if not 0 < spec.kept(d) < d:
            return [f"peft.keep={spec.keep} must be between 1 and hidden_size - 1 = {d - 1} (or keep=0 and ratio)"]
        return []

    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)
        base = unwrap(model)
        d = base.config.hidden_size
        self.mask = SharedMask(d, s.kept(d), s.init_logit).to(base.get_input_embeddings().weight.device)
        base.get_decoder().pat_mask = self.mask
        self.hook = base.get_input_embeddings().register_forward_hook(lambda m, i, out: out * self.mask().to(out.dtype))
        trainer = (ctx.specs or {}).get("trainer")
        scale = s.identity_weight / max(getattr(trainer, "grad_accum", 1), 1)

        def make(i, name, linear):
            hsm = Hsm(linear, s.r, self.mask, torch.Generator().manual_seed(ctx.seed * 7919 + i))
            if scale:
                hsm.W_down.register_hook(lambda g, w=hsm.W_down: g + scale * identity_grad(w.detach()).to(g.dtype))
            return hsm

        self.modules = wrap(model, WRITERS, make)
        return model

    def temperature(self, step: int, total: int) -> tuple[float, bool]:
        """(T at `step`, frozen?): geometric from temperature_start to temperature_end until the freeze step."""
        s = self.spec
        at = max(round(s.freeze_at * total), 1)
        return s.temperature_start * (s.temperature_end / s.temperature_start) ** min(step / at, 1.0), step >= at

    def on_train_start(self, ctx):
        self.on_step_start(ctx)

    def on_step_start(self, ctx):
        t, frozen = self.temperature(ctx.step, ctx.total_steps)
        self.mask.temperature.fill_(t)
        if frozen and not int(self.mask.frozen):
            self.mask.freeze()
            ctx.log(f"pat: mask frozen at step {ctx.step}: {self.mask.keep} of {len(self.mask.hard)} hidden channels kept")
        if ctx.metrics is not None:
            ident = sum(float(identity_loss(m.W_down.detach())) for m in self.modules.values()) / len(self.modules)
            ctx.metrics({"step": ctx.step, "pat_temperature": t, "pat_identity_loss": ident,
                         "pat_mask_mean": float(self.mask().detach().float().mean())})

    def trained_names(self, model):
        return {n for n, _ in trainable(model)} | {n for n, _ in model.named_buffers() if ".pat_mask." in n}

    def merged(self, model):
        if not int(self.mask.frozen):
            self.mask.freeze()  # a run that ended before freeze_at: binarised here (the function changes)
        return shrink(model, self.mask, self.hook)


def identity_loss(w_down: torch.Tensor) -> torch.Tensor:
    r = w_down.shape[0]
    return ((w_down.float() @ w_down.float().T - torch.eye(r, device=w_down.device)) ** 2).mean()


def identity_grad(w_down: torch.Tensor) -> torch.Tensor:
    """d/dD mean((D Dᵀ - I)²) over r x r entries = (4 / r²) (D Dᵀ - I) D."""
    r, d = w_down.shape[0], w_down.float()
    return 4.0 / r**2 * (d @ d.T - torch.eye(r, device=d.device)) @ d


@torch.no_grad()
def shrink(model: nn.Module, mask: SharedMask, hook) -> nn.Module:
    """The narrow plain HF model that computes what `model` computes under the binary mask (module docstring)."""
    base = unwrap(model)
    cfg = base.config
    d = cfg.hidden_size
    idx = mask.hard.bool().nonzero().squeeze(1)
    s = len(idx) / d
    writers = adapters(model)
    inside = tuple(w + "." for w in writers)  # an HSM's own base linear is not a reader
    readers = [(q, m) for q, m in target_linears(model, ["all-linear"])
               if q not in writers and not q.startswith(inside) and m.in_features == d]
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    for qualname, hsm in writers.items():
        w, b = hsm.folded()
        replace(model, qualname, linear(w[idx], None if b is None else b[idx], hsm.base.weight.dtype))
    for qualname, m in readers:
        replace(model, qualname, linear(m.weight[:, idx], m.bias, m.weight.dtype))
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    emb.weight = nn.Parameter(emb.weight[:, idx].clone(), requires_grad=False)
    emb.embedding_dim = len(idx)
    if head is not None:
        head.weight = emb.weight if tied else nn.Parameter(head.weight[:, idx].clone(), requires_grad=False)
        head.in_features = len(idx)
    for m in base.modules():
        if "rmsnorm" in type(m).__name__.lower() and m.weight.shape == (d,):
            m.weight = nn.Parameter((m.weight.float()[idx] / math.sqrt(s)).to(m.weight.dtype), requires_grad=False)
            m.variance_epsilon = m.variance_epsilon / s
    hook.remove()
    del base.get_decoder().pat_mask
    cfg.rms_norm_eps = cfg.rms_norm_eps / s
    cfg.hidden_size, cfg.head_dim = len(idx), head_dim
    return model


def linear(w: torch.Tensor, b: torch.Tensor | None, dtype) -> nn.Linear:
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=dtype)
    out.weight.copy_(w)
    if b is not None:
        out.bias.copy_(b)
    out.requires_grad_(False)
    return out
