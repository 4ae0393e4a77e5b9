"""`peft=perp`: PERP, parameter-efficient retraining after pruning (Zimmer, Andoni, Spiegel & Pokutta, "PERP:
Rethinking the Prune-Retrain Paradigm in the Era of LLMs", arXiv 2312.15230). HF PEFT has no sparsity-preserving
LoRA; this is tuneforge's own code, written from the paper (Sec. 3) and the authors' code (github.com/ZIB-IOL/PERP,
`peft_methods.py` SelectivePEFT and `customLayers.py`; "the reference" below).

After a model is pruned (a `prune=` stage before training, or a model pruned by `tuneforge prune`), only a few
parameters retrain: the biases, the normalisation layers' parameters, the LM head and a low-rank
reparametrisation of every pruned linear that cannot create new non-zeros:

    MaskLoRA   W' = W + s · (B A ⊙ M),   M = 1[W ≠ 0] (the pruned base's pattern, fixed),  s = alpha / r
               A random (LoRA's kaiming-uniform bound), B = 0: W' = W at the start
    ScaleLoRA  W' = W ⊙ (B A)
               A (r x in) and B (out x r) all 1/sqrt(r), so B A = r · (1/sqrt(r))² = 1 (all ones): W' = W at start

Either W' is zero wherever W is, so merging (W ← W', the export) adds no non-zeros; the zeros are exact (0 times
anything finite, and 0 added). The LM head is not pruned (the pruning stages never prune it) and gets a plain LoRA
W + s·B A, as in the reference (`lm_head` in its LoRA targets, merged classically).

Where it departs from the reference, and why:
  - tuneforge's own layers (peft/adapters.py) instead of PEFT LoRA layers swapped for custom ones: the same
    forward, and `merged()` writes W' into the base weight the same way (`set_effective_weights`).
  - MaskLoRA computes its forward as W x + s (B A ⊙ M) x rather than (W + s (B A ⊙ M)) x: equal in exact arithmetic,
    and the adapter's term stays in fp32 until the product on a bf16 base.
  - ScaleLoRA has no dropout (the reference calls a `custom_dropout` it never defines and forces dropout to 0).
  - A head tied to the input embeddings (e.g. tiny_llama, SmolLM2) is untied before its LoRA is attached, and the
    export says `tie_word_embeddings: false`: merging the head's LoRA must not move the input embeddings. The
    reference's models (OPT, Llama-2) have untied heads or merge into the shared matrix.
  - Every linear selected by `target_modules` gets the sparse LoRA even if it is dense (prune=none): MaskLoRA on a
    dense weight is plain LoRA. The base's measured sparsity is logged.
  - Note (not a departure): with ScaleLoRA's constant start every column of B and every row of A receive the same
    gradient, so B A stays rank one in exact arithmetic (a per-row times per-column rescaling of W) whatever r is;
    the reference and the paper start the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.models.layers import unwrap
from tuneforge.models.targets import replace
from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.perp.layer import HeadLora, MaskLora, ScaleLora
from tuneforge.peft.perp.spec import PerpSpec
from tuneforge.registry import register


@register("peft", "perp", config=PerpSpec)
class Perp(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)

        def make(i, name, linear):
            gen = torch.Generator().manual_seed(ctx.seed * 7919 + i)
            return MaskLora(linear, s.r, s.alpha, gen) if s.form == "masklora" else ScaleLora(linear, s.r, gen)

        mods = wrap(model, s.target_modules, make)
        zeros = sum(int((m.base.weight == 0).sum()) for m in mods.values())
        total = sum(m.base.weight.numel() for m in mods.values())
        if ctx.log is not None:
            ctx.log(f"perp: {s.form} r={s.r} on {len(mods)} linears, {zeros / max(total, 1):.1%} of their weights "
                    "are zero and stay zero")
        if s.head == "lora":
            attach_head(model, s, torch.Generator().manual_seed(ctx.seed * 7919 + len(mods)))
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if (s.biases and leaf == "bias") or (s.norms and leaf != "bias" and norm_param(model, name)):
                p.requires_grad_(True)
        return model

    def merged(self, model):
        return merge(model)


def norm_param(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rpartition(".")[0])
    return "norm" in type(owner).__name__.lower()


def attach_head(model: nn.Module, spec, gen: torch.Generator) -> None:
    """A plain LoRA on the LM head; a head tied to the input embeddings gets its own copy of the matrix first."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    qualname = next(n for n, m in base.named_modules() if m is head)
    if head.weight is base.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    replace(model, qualname, HeadLora(head, spec.r, spec.alpha, gen))
