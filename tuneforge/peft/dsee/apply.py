"""`peft=dsee`: DSEE, Dually Sparsity-Embedded Efficient Tuning (Chen et al., ACL 2023, arXiv 2111.00160). HF PEFT
does not implement it; this is tuneforge's own code, written from the paper and the authors' released code
(github.com/VITA-Group/DSEE, `non-GPT-2/examples/pytorch/text-classification/run_glue*.py` and
`src/transformers/models/bert/modeling_bert.py`; "the reference" below).

Sparsity-embedded update (the paper's Eq. 2-3): W = W0 + Delta W, Delta W = U V + S2, U V low-rank (LoRA-style,
here s B A with s = alpha / r, B = 0 at init) and S2 sparse on a fixed support Omega of N entries per matrix
(|Omega| = `sparse_n`). Omega comes from the pretrained weight: decompose W0 ~ U V + S1 (Eq. 1,
min ||W0 - U V - S1||_F^2 s.t. rank(U V) <= r, card(S1) <= c) with GreBsmo (Zhou & Tao 2013) and take the N
entries of S1 of largest magnitude (`support=grebsmo`, `layer.grebsmo`). Only the values on Omega are trained;
the support never changes.

Where the code follows the reference (`sparse_method == 'grebsmo'` in run_glue.py):
  - V_0 ~ N(0, 1) of shape 1 x n (the reference also draws U_0, which its first step overwrites);
  - `decomp_iters` = 100 rank increments, each starting from S = 0 and running 2 sweeps of
    U = qr((W - S) V^T).Q, V = U^T (W - S), S = W - U V with entries |S| < tau set to 0 (tau = 0.01, absolute);
  - after each sweep pair, `decomp_step` = 5 rows R[:5] of the QR of E = W - U V - S are appended to V;
  - Omega = the N largest |S| of the last sweep (the reference's kthvalue threshold on |S|).
Measured agreement: on SmolLM2-135M layer 10 q_proj (N = 64) this shares 23-27 of 64 entries with the reference
algorithm, as much as the reference shares with itself under another seed (17-23); see docs/peft_custom.md.
Where it departs, and why:
  - R[:step] of qr(E) is computed as qr(E[:, :step]).Q^T E (the same rows in exact arithmetic: Householder QR's
    first columns depend on E's first columns only): a QR of m x 5 instead of m x n per rank increment. The
    procedure is numerically chaotic (on SmolLM2 layer 10 q_proj, adding 1e-7 to W, or float64 instead of
    float32, keeps 19 and 21 of the reference's 64 entries), so float-level differences give another, equally
    valid draw; the cheaper QR changes nothing else.
  - The rank stops growing at min(m, n) - 1. The reference's 100 increments reach rank 496, below BERT-base's
    768; on narrower matrices (SmolLM2's 192-row k_proj/v_proj, tiny test models) the rank would reach full,
    where W - U V = 0, S = 0 and the reference's threshold (|S| >= the N-th largest = 0) selects every entry.
  - Exactly N entries: the N largest |W - U V| of the last sweep, which are the N largest |S| whenever S has N
    nonzeros; with fewer (tiny random models end with S = 0 at tau = 0.01) the reference's `>=` on |S| would
    keep every entry.
  - Every target matrix (default all linears of the decoder layers); the reference adapts query and value only.
  - Each target matrix gets its own seed (`ctx.seed * 1_000_003 + i`); the reference draws from the global RNG.
  - The support is computed once per run and saved in the run directory (`dsee_support.safetensors`, with the
    knobs and seed that made it); a rebuild (resume, eval, export) reads it back instead of recomputing, since a
    recomputation on another device or thread count may differ (see the chaos above). Several ranks split the
    matrices between them and exchange the results, so every rank trains the same support. Runs from before
    this file existed recompute their support by their own (residual) rule, exactly as they did.

`support=residual` is tuneforge's rule before issue 10 (a fixed-rank decomposition, `layer.decompose`): kept
because it is deterministic in W and ~40x cheaper on CPU, and because runs made with it rebuild with it;
`support=magnitude` takes the N largest |W0|.

Sparse final weights (the paper's second sparsity, Sec. 3.2) are export stages: `prune` (tuneforge/export/
prune.py; `how=global` is the reference's global magnitude pruning over all linears) and `retune` (tuneforge/
export/retune.py, the reference's step 2: train again with the pruning mask fixed). The DSEE recipes select
`export=[merge,prune,retune]`. Training and the run's own eval see the unpruned model.
"""

from __future__ import annotations

import json
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tuneforge.distributed import dist
from tuneforge.models.targets import target_linears
from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.dsee.layer import DseeLinear, support
from tuneforge.peft.dsee.spec import DseeSpec
from tuneforge.registry import register

CACHE = "dsee_support.safetensors"
KNOBS = ("support", "sparse_n", "decomp_iters", "decomp_step", "decomp_threshold", "decomp_rank")


@register("peft", "dsee", config=DseeSpec)
class Dsee(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)
        index = self.supports(model, ctx)

        def make(i, name, linear):
            return DseeLinear(linear, s.r, s.alpha, index[name], torch.Generator().manual_seed(ctx.seed * 7919 + i))

        self.modules = wrap(model, s.target_modules, make)
        return model

    def supports(self, model, ctx) -> dict[str, torch.Tensor]:
        """{target name: support}: rank 0 reads it from the run directory when it was made with these knobs and
        seed; otherwise each rank computes a share of the matrices, the shares are exchanged, and rank 0 saves
        them there. Every rank ends with rank 0's view."""
        s, targets = self.spec, target_linears(model, self.spec.target_modules)
        key = json.dumps({"seed": ctx.seed, **{k: getattr(s, k) for k in KNOBS}}, sort_keys=True)
        path = ctx.run_dir / CACHE if ctx.run_dir is not None else None
        saved = read(path, key, {n for n, _ in targets}) if dist.is_main() else None
        saved = dist.broadcast_object(saved)
        if saved is not None:
            return saved
        t0, rank, world = time.time(), dist.rank(), dist.world()
        mine = {n: support(lin.weight, s, ctx.seed * 1_000_003 + i)
                for i, (n, lin) in enumerate(targets) if i % world == rank}
        index = {}
        for r in range(world):
            index.update(dist.broadcast_object(mine if r == rank else None, src=r))
        if ctx.log is not None:
            ctx.log(f"dsee: support of {len(index)} matrices ({s.support}) in {time.time() - t0:.1f}s")
        if path is not None and dist.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({n: t.contiguous() for n, t in index.items()}, str(path), metadata={"knobs": key})
        return index

    def merged(self, model):
        return merge(model)


def read(path, key: str, names: set[str]) -> dict[str, torch.Tensor] | None:
    """The saved supports, if `path` holds one per name made with the knobs `key`."""
    if path is None or not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("knobs") != key or set(f.keys()) != names:
            return None
        return {n: f.get_tensor(n) for n in f.keys()}
