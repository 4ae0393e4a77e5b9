"""`peft=dsee`: DSEE, Dually Sparsity-Embedded Efficient Tuning (Chen et al., 2021, arXiv 2111.00160). HF PEFT does
not implement it; this is tuneforge's own code.

Sparsity-embedded update (the paper's Eq. for the weight update): Delta W = U V + S2, U V low-rank (LoRA-style,
here s B A with s = alpha / r, B = 0 at init) and S2 sparse with a fixed support Omega of N entries (|Omega| = N
per matrix). Omega is chosen as in the paper: decompose the pretrained weight into low-rank + sparse parts,
W ~ L + S (the paper uses GreBsmo), and take the positions of the N largest |S| entries. tuneforge's
decomposition is one truncated SVD, S = W - SVD_k(W) (k = decomp_rank; randomized and seeded above 1024), i.e. the first
GreBsmo step; `support=magnitude` uses the N largest |W| instead. Only the values on Omega are trained; the
support never changes.

Sparse final weights (the paper's second sparsity): at merge/export the merged weight W0 + Delta W of every
adapted matrix is pruned to exactly `prune_sparsity` -- unstructured magnitude pruning (the round(p x numel)
smallest |w| set to zero) or structured row pruning (the round(p x rows) output rows of smallest L2 norm).
Attention-head pruning is not implemented. Pruning happens only in `merged()` (export), so the trained, unpruned
model is what training/eval see.
"""

from __future__ import annotations

from functools import partial

import torch

from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.dsee.layer import DseeLinear, prune, support
from tuneforge.peft.dsee.spec import DseeSpec
from tuneforge.registry import register


@register("peft", "dsee", config=DseeSpec)
class Dsee(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)

        def make(i, name, linear):
            index = support(linear.weight, s.sparse_n, s.support, s.decomp_rank, ctx.seed * 1_000_003 + i)
            return DseeLinear(linear, s.r, s.alpha, index, torch.Generator().manual_seed(ctx.seed * 7919 + i))

        self.modules = wrap(model, s.target_modules, make)
        return model

    def merged(self, model):
        s = self.spec
        return merge(model, partial(prune, how=s.prune, sparsity=s.prune_sparsity) if s.prune != "none" else None)
