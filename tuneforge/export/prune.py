"""`prune`: zero a fixed fraction of a merged model's weights -- DSEE's second sparsity (Chen et al., 2021, arXiv
2111.00160), usable after any method's merge.

`how=global` zeroes the round(p x total) smallest |w| over all target matrices together (one threshold for all,
so each matrix keeps what it keeps): the DSEE reference's `prune.global_unstructured(..., L1Unstructured)` over
every linear (run_glue_prune_with_WAB.py), see `prune_global`. The reference scores its adapted matrices
(query, value) by the update alone (`prune_mode=ABS`: |U V + S|, in a second global pool) and the others by
|W0|, and keeps the adapters unmerged on top of the pruned W0; tuneforge exports one merged model, so it scores
every target matrix by its merged weight |W0 + U V + S| in one pool (what is kept is what the export computes).
`how=unstructured` zeroes each target matrix's round(p x numel) smallest |w|; `how=rows` its round(p x rows)
output rows of smallest L2 norm; `how=heads` removes, in every decoder layer, the round(p x num_heads) attention
heads of smallest ||W_o[:, h]||_F x ||W_v[g(h)]||_F (see `prune_heads`). The paper ranks heads with learnable
head coefficients under an l1 penalty (EarlyBERT-style); tuneforge uses this data-free weight score instead.
Target matrices default to the ones the run's method adapted (`peft.target_modules`), so a DSEE run prunes
exactly the matrices it trained, as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from tuneforge.config.spec import Spec, knob, one_of
from tuneforge.errors import InputError
from tuneforge.export.base import Stage, default_targets
from tuneforge.export.base import targets as stage_targets
from tuneforge.models.layers import decoder_layers, unwrap
from tuneforge.registry import register


@dataclass
class PruneSpec(Spec):
    takes: ClassVar[str] = "merged"
    how: str = knob("unstructured", "global (smallest |w| over all target matrices together), unstructured "
                                    "(smallest |w| of each target matrix), rows (its output rows of smallest L2 "
                                    "norm) or heads (whole attention heads of every layer)")
    sparsity: float = knob(0.5, "fraction set to zero: of all target entries together (global), of each target "
                                "matrix's entries (or rows), or of each layer's attention heads")
    target_modules: Optional[list[str]] = knob(None, "matrices pruned by unstructured/rows: linear names inside the "
                                                     "decoder layers or [all-linear]; null: the run's "
                                                     "peft.target_modules if the method has them, else all-linear")

    def problems(self):
        out = one_of(self, "how", ("global", "unstructured", "rows", "heads"))
        if not 0 < self.sparsity < 1:
            out.append(f"sparsity={self.sparsity} must be in (0, 1)")
        if self.target_modules is not None and not self.target_modules:
            out.append("target_modules is empty: list module names, [all-linear], or null (the method's targets)")
        return out


@register("export", "prune", config=PruneSpec)
class Prune(Stage):
    def run(self, model, ctx):
        s = self.spec
        if s.how == "heads":
            ctx.say(f"prune: heads, {s.sparsity:.0%} of each layer's attention heads")
            return prune_heads(model, s.sparsity)
        targets = stage_targets(model, default_targets(s, ctx), "prune")
        kinds = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in targets}))
        if s.how == "global":
            prune_global([m.weight for _, m in targets], s.sparsity)
            ctx.say(f"prune: global, {s.sparsity:.0%} of the {len(targets)} matrices together ({kinds})")
            return model
        for _, m in targets:
            m.weight.copy_(prune(m.weight, s.how, s.sparsity))
        ctx.say(f"prune: {s.how}, {s.sparsity:.0%} of each of {len(targets)} matrices ({kinds})")
        return model


@torch.no_grad()
def prune_global(weights: list[torch.Tensor], sparsity: float) -> None:
    """Zero, in place, the k = round(sparsity x total) entries of smallest |w| over all `weights` together.

    The k-th smallest |w| (t) is found by bisection on its float32 bit pattern (order-preserving for non-negative
    floats): 31 counting passes over the weights, each holding one matrix at a time, instead of sorting all of
    them at once (torch.nn.utils.prune.global_unstructured keeps a k-long int64 index: 26 GB for half of a 7B
    model). Every |w| < t is zeroed, then entries equal to t in target order until exactly k are."""
    k = round(sparsity * sum(w.numel() for w in weights))
    if k == 0:
        return

    def at_most(bits: int) -> int:
        t = torch.tensor(bits, dtype=torch.int32).view(torch.float32)
        return sum(int((w.float().abs() <= t).sum()) for w in weights)

    lo, hi = 0, 0x7F800000  # +0.0 .. +inf
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at_most(mid) >= k else (mid + 1, hi)
    t = torch.tensor(lo, dtype=torch.int32).view(torch.float32)
    ties = k - sum(int((w.float().abs() < t).sum()) for w in weights)  # how many entries equal to t go
    for w in weights:
        a = w.float().abs()
        tied = (a == t).flatten().nonzero().flatten()[:ties]
        ties -= tied.numel()
        w.masked_fill_(a < t, 0)
        w.view(-1)[tied] = 0


@torch.no_grad()
def prune(w: torch.Tensor, how: str, sparsity: float) -> torch.Tensor:
    """Zero the round(sparsity x entries) smallest-magnitude entries (unstructured), or the round(sparsity x rows)
    rows of smallest L2 norm (rows: output neurons). Ranked in fp32."""
    w = w.clone()
    f = w.float()
    if how == "unstructured":
        k = round(sparsity * w.numel())
        w.view(-1)[torch.topk(f.abs().flatten(), k, largest=False).indices] = 0
    elif how == "rows":
        k = round(sparsity * w.shape[0])
        w[torch.topk(f.norm(dim=1), k, largest=False).indices] = 0
    return w


def attention(layer: nn.Module) -> list[nn.Module]:
    """A decoder layer's q/k/v/o projections (Llama-style `self_attn.{q,k,v,o}_proj`)."""
    attn = getattr(layer, "self_attn", None)
    projs = [getattr(attn, f"{x}_proj", None) for x in "qkvo"]
    if not all(isinstance(p, nn.Module) for p in projs):
        raise InputError([f"export.prune.how=heads needs self_attn.{{q,k,v,o}}_proj in every decoder layer "
                          f"({type(layer).__name__} has not): use export.prune.how=unstructured or rows"])
    return projs


def _zero_heads(linear: nn.Module, heads: list[int], hd: int, dim: int) -> None:
    """Zero the rows (dim 0, and the bias) or columns (dim 1) of `heads`, each `hd` wide."""
    idx = (torch.tensor(heads, dtype=torch.long)[:, None] * hd + torch.arange(hd)).flatten()
    if dim == 0:
        linear.weight[idx] = 0
        if linear.bias is not None:
            linear.bias[idx] = 0
    else:
        linear.weight[:, idx] = 0


@torch.no_grad()
def prune_heads(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the round(sparsity x num_heads) least important attention heads of every layer, in place.

    Importance of query head h (KV group g(h)): ||W_o[:, h]||_F x ||W_v[g(h)]||_F -- the head adds
    W_o[:, h] (sum_j a_ij W_v[g] x_j) to the output with attention weights a_ij >= 0 summing to 1, so this bounds
    its output's scale per unit input norm. A pruned head loses its o_proj input columns and q_proj rows (and
    bias), which removes exactly its output; k_proj/v_proj rows of a KV group (GQA) are zeroed only when every
    query head sharing that group is pruned, so the surviving heads compute exactly what they did before."""
    base = unwrap(model)
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    nh = cfg.num_attention_heads
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    k, group = round(sparsity * nh), nh // nkv
    for layer in decoder_layers(model)[1]:
        q, kp, v, o = attention(layer)
        o_norm = o.weight.float().view(-1, nh, hd).norm(dim=(0, 2))
        v_norm = v.weight.float().view(nkv, hd, -1).norm(dim=(1, 2))
        gone = torch.topk(o_norm * v_norm.repeat_interleave(group), k, largest=False).indices.tolist()
        _zero_heads(o, gone, hd, dim=1)
        _zero_heads(q, gone, hd, dim=0)
        dead = [g for g in range(nkv) if set(range(g * group, (g + 1) * group)) <= set(gone)]
        for p in (kp, v):
            _zero_heads(p, dead, hd, dim=0)
    return model
