"""`peft=pst`: PST, Parameter-efficient Sparse Training (Li, Luo, Yan, Zhang, Yang, Lin, Huang, Wang & Xiao,
"Parameter-Efficient Sparsity for Large Language Models Fine-Tuning", IJCAI 2022, arXiv 2205.11005). No package
implements it; this is tuneforge's own code, written from the paper (Sec. 3-4) and the authors' code
(github.com/alibaba/AliceMind, S4/PST/pst/sparse.py SparseLinear and pst/utils.py; "the reference" below).

Each adapted linear computes with W' = M ⊙ (W + β U V): W frozen, U V a trainable low-rank weight update (Eq. 9).
The mask keeps the weights of highest importance (Eq. 4-8):

    S = |W + β U V|  +  α1 A B  +  α2 (R 1ᵀ + 1 Cᵀ)
        data-free       data-driven, low-rank (Eq. 6) and structured (Eq. 7; R per output row, C per input column)
    M = TopK(S, k),  k = round((1 - s_t) · numel(W)),  dL/dS = dL/dM (straight-through estimator, Eq. 5)

so the importance parameters A, B, R, C learn from the task's gradient, and U, V through both |W + β U V| and W'.
The sparsity s_t follows the cubic schedule of the reference (`schedule_sparsity_ratio`, Zhu & Gupta's):

    s_t = s_i                                              t <= w_i T
    s_t = s_f                                              t >  T - w_f T
    s_t = s_f + (s_i - s_f) (1 - (t - w_i T) / (T - (w_i + w_f) T))³     otherwise

(t the optimizer step about to run, 0-based; T the run's steps; s_i, s_f = `initial_sparsity`, `sparsity`;
w_i, w_f = `initial_warmup`, `final_warmup`). Merging writes W' at the last step's k into W (the export): exactly
k non-zeros per matrix, as the reference's `save_sparse_model` (`convert`).

Where it departs from the reference, and why:
  - k = numel - round(s_t · numel) pruned by round(), not int() (tuneforge's prune masks count the same way); ties
    in S go to the lower flat index (a stable sort; the reference's argsort leaves them unspecified).
  - Only the linears of the decoder layers (`target_modules`, default all of them); the reference converts every
    nn.Linear of the model, the LM head included. Pruning the head is not done anywhere in tuneforge.
  - The kept count is a buffer of each layer (`n_kept`), saved with the trained weights, so a rebuilt run
    (eval, export) computes with the mask the run ended with; the reference sets a module attribute per step.
  - PST starts from the dense model: a `prune=` stage before it is refused (it would regrow pruned weights);
    PST is its own sparsifier.
  - The schedule's defaults (w_i = 0.1, w_f = 0.3 of the steps) are tuneforge's: the reference's scripts take them
    as arguments without published values.
"""

from __future__ import annotations

import torch

from tuneforge.peft.adapters import merge, wrap
from tuneforge.peft.base import TuningMethod, trainable
from tuneforge.peft.pst.layer import PstLinear
from tuneforge.peft.pst.spec import PstSpec
from tuneforge.registry import register


def sparsity_at(step: int, total: int, spec) -> float:
    """The cubic schedule (module docstring)."""
    wi, wf, si, sf = spec.initial_warmup * total, spec.final_warmup * total, spec.initial_sparsity, spec.sparsity
    if step <= wi:
        return si
    if step > total - wf:
        return sf
    return sf + (si - sf) * (1 - (step - wi) / (total - wi - wf)) ** 3


@register("peft", "pst", config=PstSpec)
class Pst(TuningMethod):
    def apply(self, model, ctx):
        for p in model.parameters():
            p.requires_grad_(False)

        def make(i, name, linear):
            return PstLinear(linear, self.spec, torch.Generator().manual_seed(ctx.seed * 7919 + i))

        self.modules = wrap(model, self.spec.target_modules, make)
        self.set_sparsity(self.spec.initial_sparsity)
        return model

    def set_sparsity(self, s: float) -> None:
        for m in self.modules.values():
            n = m.base.weight.numel()
            m.n_kept.fill_(n - round(s * n))

    def on_train_start(self, ctx):
        self.on_step_start(ctx)

    def on_step_start(self, ctx):
        s = sparsity_at(ctx.step, ctx.total_steps, self.spec)
        self.set_sparsity(s)
        if ctx.metrics is not None:
            ctx.metrics({"step": ctx.step, "pst_sparsity": s})

    def trained_names(self, model):
        return {n for n, _ in trainable(model)} | {n for n, _ in model.named_buffers() if n.endswith(".n_kept")}

    def merged(self, model):
        return merge(model)
