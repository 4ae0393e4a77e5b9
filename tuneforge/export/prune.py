"""`prune`: zero a fixed fraction of a merged model's weights -- DSEE's second sparsity (Chen et al., 2021, arXiv
2111.00160), usable after any method's merge.

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
from tuneforge.export.base import Stage
from tuneforge.models.layers import decoder_layers, unwrap
from tuneforge.models.targets import target_linears
from tuneforge.registry import register


@dataclass
class PruneSpec(Spec):
    takes: ClassVar[str] = "merged"
    how: str = knob("unstructured", "unstructured (smallest |w| of each target matrix), rows (its output rows of "
                                    "smallest L2 norm) or heads (whole attention heads of every layer)")
    sparsity: float = knob(0.5, "fraction of each target matrix's entries (or rows), or of each layer's attention "
                                "heads, set to zero")
    target_modules: Optional[list[str]] = knob(None, "matrices pruned by unstructured/rows: linear names inside the "
                                                     "decoder layers or [all-linear]; null: the run's "
                                                     "peft.target_modules if the method has them, else all-linear")

    def problems(self):
        out = one_of(self, "how", ("unstructured", "rows", "heads"))
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
        names = s.target_modules or getattr(ctx.specs.get("peft"), "target_modules", None) or ["all-linear"]
        targets = linears(model, names)
        for _, m in targets:
            m.weight.copy_(prune(m.weight, s.how, s.sparsity))
        kinds = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in targets}))
        ctx.say(f"prune: {s.how}, {s.sparsity:.0%} of each of {len(targets)} matrices ({kinds})")
        return model


def linears(model: nn.Module, names) -> list[tuple[str, nn.Linear]]:
    try:
        return target_linears(model, names)
    except ValueError as e:
        raise InputError([f"export.prune: {e}: set export.prune.target_modules"]) from None


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
