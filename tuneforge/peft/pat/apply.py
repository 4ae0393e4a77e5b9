"""`peft=pat`: PAT, Pruning-Aware Tuning (Liu, Yang, Chen, Zhang, Wang, Du & Du, "PAT: Pruning-Aware Tuning for
Large Language Models", AAAI 2025, arXiv 2408.14721). No package implements it; this is tuneforge's own code, written
from the paper and checked against the authors' released code (github.com/kriskrisliu/PAT: `DimDownModule.py`, the
modified `modeling_llama.py`, `script/merge_dimdown.py`; run with `--ft_mode dimdown --trainable_mask
--identity_loss`).

PAT removes hidden channels of the residual stream (the model's width; the reference's `dimdown_dim` 3072 of
Llama-2-7B's 4096 is 25%) while it fine-tunes:

    HSM        y = s ⊙ M ⊙ (z + W_up W_down z) on the embedding output and on the output z of every linear that
               writes the residual stream (o_proj, down_proj); W_down r x d initialised like nn.Linear (the
               reference's kaiming_uniform(a=sqrt 5)), W_up d x r at zero, s a per-channel scale at one (the
               reference's `dimdown_scale`), so an HSM starts as M ⊙ z
    mask       one trainable vector m over the d hidden channels, at zero, shared by every HSM (the unified mask):
               M = 1 / (1 + exp(min(-T m, 10))) + b, T = 1 / (1 - ln(max(1, t)) / ln G + 1e-6), b = max(0.5 - t/G, 0)
               at step t of G: M starts at 1.5, the bias decays to 0 by G/2 and T grows, so M becomes a step
               function of m's sign; after `freeze_at` (80%) of the steps M is frozen: 1 at the `keep` largest m,
               0 elsewhere, and the remaining steps train the HSMs under that binary mask
    mask loss  L_M = 10 |#{m >= 0} - keep| / keep + mean_{m > 0} (m - 0.5)^2 + mean_{m <= 0} (m + 0.5)^2, the count
               through a straight-through step (the reference's `binarize`): it drives exactly `keep` logits
               positive and pulls every logit to +-0.5; weight `mask_weight`
    identity   L_id = MSE(W_down W_downᵀ, I_r) per HSM, weight `identity_weight` (it keeps W_down a rotation so
    loss       that M and s, not W_down, do the scaling)

With M binary the residual stream is exactly zero on the removed channels (every writer is masked), so the model
shrinks exactly (`merged`, the export):
  - each HSM folds into its linear: W' = diag(s ⊙ M) (I + W_up W_down) W, b' likewise, and keeps only the kept rows;
    the embedding's HSM folds into the embedding matrix the same way (row-wise);
  - every linear that reads the residual (q, k, v, gate, up, the LM head) keeps only the kept input columns;
  - RMSNorm averages over d channels of which d - keep are zero: with s = keep / d,
    x / sqrt(s·mean_kept(x²) + eps) = x / (sqrt(s) sqrt(mean_kept(x²) + eps / s)), so each norm's weight becomes
    g[kept] / sqrt(s) and `rms_norm_eps` becomes eps / s: the narrow model computes the same function;
  - the config says hidden_size = keep with head_dim kept explicit (attention widths do not change).
The export loads in plain transformers (no modified library).

Departures from the reference code, and why:
  - The freeze: the reference keeps M soft after 0.8 G (detached at T(0.8 G), bias 0) and rounds sign(m) only at
    merge time, so the number kept is whatever the count loss reached. tuneforge binarises at the freeze to the top
    `keep` logits, which equals the sign rule once the count loss is met, and guarantees exactly `keep` channels;
    the last 20% of the steps then train under the exact mask the export uses.
  - G is the run's total step count (the reference takes it by hand, `--global_step`).
  - Both losses depend on parameters only, so they enter as gradient hooks (on W_down and on m), scaled by
    1 / grad_accum so that the optimizer step carries them once; they are logged, not added to the logged loss.
  - The identity loss covers every HSM. The reference's decoder loop keeps only the last layer's returned loss
    (`_loss` is overwritten per layer), so it regularises the embedding's and the last layer's HSMs only.
  - An empty side of the polarisation term adds 0: the reference's mean over an empty set is NaN (at step 0 every
    m is 0, so no m > 0).
  - The merge scales each norm by 1/sqrt(s) and its eps by 1/s (exact); the reference scales the norm weights only
    and drops `dimdown_scale` at merge time (its merged model differs from the trained one where s != 1).
  - A tied embedding and head are untied at export when the embedding's HSM changed the embedding (the head reads
    the plain embedding matrix).
  - Only the HSMs and the mask train: the reference also trains LoRA (r=20, alpha=4) on every linear beside them;
    tuneforge runs one tuning method per model, and the reference merges its LoRA before folding the HSMs, so
    dropping it does not change how PAT prunes.
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
from tuneforge.peft.pat.layer import Hsm, SharedMask, Transform, mask_grad, mask_loss, schedule
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
        if spec.r > d:
            return [f"peft.r={spec.r} exceeds hidden_size {d}: W_down W_downᵀ cannot be the identity; set peft.r <= {d}"]
        return []

    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)
        base = unwrap(model)
        d = base.config.hidden_size
        emb = base.get_input_embeddings()
        self.mask = SharedMask(d, s.kept(d)).to(emb.weight.device)
        trainer = (ctx.specs or {}).get("trainer")
        per_step = 1.0 / max(getattr(trainer, "grad_accum", 1), 1)  # each micro-batch's hook adds its share once
        if s.mask_weight:
            w = s.mask_weight * per_step
            self.mask.logits.register_hook(lambda g: g + w * mask_grad(self.mask.logits, self.mask.keep).to(g.dtype))

        self.transforms = []

        def transform(i, d):
            t = Transform(d, s.r, self.mask, torch.Generator().manual_seed(ctx.seed * 7919 + i)).to(emb.weight.device)
            if s.identity_weight:
                w = s.identity_weight * per_step
                t.W_down.register_hook(lambda g, m=t.W_down: g + w * identity_grad(m.detach()).to(g.dtype))
            self.transforms.append(t)
            return t

        decoder = base.get_decoder()
        decoder.pat_mask, decoder.pat_embed = self.mask, transform(0, d) if s.embedding_hsm else None
        self.hook = emb.register_forward_hook(lambda m, i, out: decoder.pat_embed(out) if decoder.pat_embed is not None
                                              else out * self.mask().to(out.dtype))
        self.modules = wrap(model, WRITERS, lambda i, name, linear: Hsm(linear, transform(i + 1, d)))
        return model

    def on_train_start(self, ctx):
        self.on_step_start(ctx)

    def on_step_start(self, ctx):
        temperature, bias = schedule(ctx.step, ctx.total_steps)
        self.mask.temperature.fill_(temperature)
        self.mask.bias.fill_(bias)
        if ctx.step >= max(round(self.spec.freeze_at * ctx.total_steps), 1) and not int(self.mask.frozen):
            self.mask.freeze()
            ctx.log(f"pat: mask frozen at step {ctx.step}: {self.mask.keep} of {len(self.mask.hard)} hidden channels "
                    f"kept ({int((self.mask.logits >= 0).sum())} logits >= 0)")
        if ctx.metrics is not None:
            downs = [t.W_down for t in self.transforms]
            logits = self.mask.logits.detach()
            ctx.metrics({"step": ctx.step, "pat_temperature": temperature, "pat_bias": bias,
                         "pat_identity_loss": sum(float(identity_loss(w.detach())) for w in downs) / len(downs),
                         "pat_mask_loss": float(mask_loss(logits.float(), self.mask.keep)),
                         "pat_logits_positive": int((logits >= 0).sum()),
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
    emb, head, decoder = base.get_input_embeddings(), base.get_output_embeddings(), base.get_decoder()
    tied = head is not None and head.weight is emb.weight
    plain = emb.weight
    folded = plain.float() @ decoder.pat_embed.matrix().T if decoder.pat_embed is not None else plain
    emb.weight = nn.Parameter(folded[:, idx].to(plain.dtype).clone(), requires_grad=False)
    emb.embedding_dim = len(idx)
    if head is not None:  # the head reads the plain matrix: a tied head is untied when the embedding's HSM changed it
        untie = tied and decoder.pat_embed is not None
        head.weight = nn.Parameter(plain[:, idx].clone(), requires_grad=False) if not tied or untie else emb.weight
        head.in_features = len(idx)
        if untie:
            cfg.tie_word_embeddings = False
    for m in base.modules():
        if "rmsnorm" in type(m).__name__.lower() and m.weight.shape == (d,):
            m.weight = nn.Parameter((m.weight.float()[idx] / math.sqrt(s)).to(m.weight.dtype), requires_grad=False)
            m.variance_epsilon = m.variance_epsilon / s
    hook.remove()
    del decoder.pat_mask, decoder.pat_embed
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
