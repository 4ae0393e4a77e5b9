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

Sparse final weights (the paper's second sparsity) are not part of the method: the `prune` export stage
(tuneforge/export/prune.py) zeroes a fixed fraction of the merged weights, e.g. `export=[merge,prune]` with
`export.prune.how=unstructured|rows|heads` and `export.prune.sparsity`, as the DSEE recipes select. Training and
the run's own eval see the unpruned model.
"""

from __future__ import annotations

import torch

from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.dsee.layer import DseeLinear, support
from tuneforge.peft.dsee.spec import DseeSpec
from tuneforge.registry import register


@register("peft", "dsee", config=DseeSpec)
class Dsee(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)

        def make(i, name, linear):
            index = support(linear.weight, s.sparse_n, s.support, s.decomp_rank, ctx.seed * 1_000_003 + i,
                            s.decomp_iters)
            return DseeLinear(linear, s.r, s.alpha, index, torch.Generator().manual_seed(ctx.seed * 7919 + i))

        self.modules = wrap(model, s.target_modules, make)
        return model

    def merged(self, model):
        return merge(model)
