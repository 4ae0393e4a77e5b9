"""`peft=dsee`: DSEE, Dually Sparsity-Embedded Efficient Tuning (Chen et al., 2021, arXiv 2111.00160). HF PEFT does
not implement it; this is tuneforge's own code.

Sparsity-embedded update (the paper's Eq. for the weight update): Delta W = U V + S2, U V low-rank (LoRA-style,
here s B A with s = alpha / r, B = 0 at init) and S2 sparse with a fixed support Omega of N entries (|Omega| = N
per matrix). Omega is chosen as in the paper: decompose the pretrained weight into low-rank + sparse parts with
GreBsmo (Zhou & Tao 2013),

    min_{U,V,S} ||W - U V - S||_F^2  s.t.  rank(U V) <= k,  card(S) <= N      (k = decomp_rank)

alternating U = qr((W - S) V^T).Q, V = U^T (W - S) (bilateral projection / least squares) and
S = P_N(W - U V) (keep the N largest-magnitude residual entries) from U V = SVD_k(W), for up to `decomp_iters`
iterations (1 = a single truncated SVD step; see `layer.decompose`), and take Omega = supp(S).
`support=magnitude` uses the N largest |W| instead. Only the values on Omega are trained; the support never
changes.

Sparse final weights (the paper's second sparsity): at merge/export the merged weight W0 + Delta W is pruned to
exactly `prune_sparsity` -- unstructured magnitude pruning of every adapted matrix (the round(p x numel)
smallest |w| set to zero), structured row pruning (the round(p x rows) output rows of smallest L2 norm), or
structured attention-head pruning (`prune=heads`: in every layer the round(p x num_heads) heads of smallest
||W_o[:, h]||_F x ||W_v[g(h)]||_F are removed: their q_proj rows and o_proj columns zeroed, and the k/v rows of a
GQA group whose query heads are all pruned; see `layer.prune_heads`). The paper ranks heads with learnable head
coefficients under an l1 penalty (EarlyBERT-style); tuneforge uses this data-free weight score instead, on the
merged weights of every layer whether or not its attention projections were adapted. Pruning happens only in
`merged()` (export), so the trained, unpruned model is what training/eval see.
"""

from __future__ import annotations

from functools import partial

import torch

from tuneforge.models.layers import decoder_layers
from tuneforge.models.shapes import targets
from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.dsee.layer import DseeLinear, attention, prune, prune_heads, support
from tuneforge.peft.dsee.spec import DseeSpec
from tuneforge.registry import register


@register("peft", "dsee", config=DseeSpec)
class Dsee(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        _, out = targets(shape, spec.target_modules)
        if spec.prune == "heads":
            try:
                for layer in shape.layers():
                    attention(layer)
            except ValueError as e:
                out.append(f"peft.prune=heads: {e.args[0]}; use peft.prune=rows or unstructured")
        return out

    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)
        if s.prune == "heads":  # fail now, not at export
            for layer in decoder_layers(model)[1]:
                attention(layer)

        def make(i, name, linear):
            index = support(linear.weight, s.sparse_n, s.support, s.decomp_rank, ctx.seed * 1_000_003 + i,
                            s.decomp_iters)
            return DseeLinear(linear, s.r, s.alpha, index, torch.Generator().manual_seed(ctx.seed * 7919 + i))

        self.modules = wrap(model, s.target_modules, make)
        return model

    def merged(self, model):
        s = self.spec
        if s.prune == "heads":
            return prune_heads(merge(model), s.prune_sparsity)
        return merge(model, partial(prune, how=s.prune, sparsity=s.prune_sparsity) if s.prune != "none" else None)
