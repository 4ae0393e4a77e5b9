"""`peft.init=pruned`: initialize the side network from the backbone by structural magnitude pruning
(arXiv 2206.06522, Sec. 3.2: the side network starts as a pruned copy of the backbone, keeping the rows/columns
with the largest L1 norm, as in filter pruning, Li et al. 2017).

Coupled dimensions are pruned together, so the pruned blocks compute a consistent (smaller) function:
- residual stream: one set of d/r dimensions for the whole side network (importance: L1 norm of every weight
  row/column that reads or writes the dimension, summed over layers); norms keep those entries;
- RoPE pairs: one set of head_dim/(2r) frequency pairs (j, j + head_dim/2) for all layers and heads (the side
  network shares one rotary embedding, whose frequencies become the kept pairs' backbone frequencies);
- values: per layer, head_dim/r dimensions shared by every head; MLP: per layer, d_ff/r hidden units.
tuneforge's own choice: the ladders start as the selections of the kept residual dimensions (down_i(h) = h[kept]),
so the pruned blocks read the coordinates they were pruned for.
"""

from __future__ import annotations

import torch

from tuneforge.peft.lst.layer import head_dim


def top(score: torch.Tensor, k: int) -> torch.Tensor:
    return score.topk(k).indices.sort().values


def col_l1(w):  # importance of each input dimension
    return w.abs().sum(0)


def row_l1(w):  # importance of each output dimension
    return w.abs().sum(1)


def head_rows(w: torch.Tensor, heads: int, hd: int, dims: torch.Tensor) -> torch.Tensor:
    """The rows of a (heads * hd, ...) projection keeping `dims` of every head."""
    return w.view(heads, hd, -1)[:, dims].reshape(heads * len(dims), -1)


@torch.no_grad()
def init_from_backbone(side, decoder, r: int) -> None:
    cfg = decoder.config
    hd, nh, nkv = head_dim(cfg), cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size
    layers = [(b.self_attn, b.mlp) for b in decoder.layers]
    keep = top(sum(col_l1(a.q_proj.weight) + col_l1(a.k_proj.weight) + col_l1(a.v_proj.weight) + row_l1(a.o_proj.weight)
                   + col_l1(m.gate_proj.weight) + col_l1(m.up_proj.weight) + row_l1(m.down_proj.weight)
                   for a, m in layers), d // r)

    def pairs(w, heads):  # importance of each RoPE pair j: rows (head, j) and (head, j + hd/2) of every head
        return w.abs().view(heads, 2, hd // 2, -1).sum((0, 1, 3))

    kept_pairs = top(sum(pairs(a.q_proj.weight, nh) + pairs(a.k_proj.weight, nkv) for a, _ in layers), hd // (2 * r))
    rope = torch.cat([kept_pairs, kept_pairs + hd // 2])
    side.rotary_emb.inv_freq.copy_(decoder.rotary_emb.inv_freq[kept_pairs])
    side.rotary_emb.original_inv_freq.copy_(side.rotary_emb.inv_freq)
    for down in side.downs:
        down.weight.zero_()
        down.weight[torch.arange(len(keep)), keep] = 1.0
    side.norm.weight.copy_(decoder.norm.weight[keep])
    for (a, m), block, src in zip(layers, side.layers, decoder.layers):
        sa, sm = block.self_attn, block.mlp
        vals = top(row_l1(a.v_proj.weight).view(nkv, hd).sum(0) + col_l1(a.o_proj.weight).view(nh, hd).sum(0), hd // r)
        for dst, w, heads, dims in ((sa.q_proj, a.q_proj, nh, rope), (sa.k_proj, a.k_proj, nkv, rope),
                                    (sa.v_proj, a.v_proj, nkv, vals)):
            dst.weight.copy_(head_rows(w.weight, heads, hd, dims)[:, keep])
            if w.bias is not None:
                dst.bias.copy_(head_rows(w.bias[:, None], heads, hd, dims)[:, 0])
        sa.o_proj.weight.copy_(a.o_proj.weight[keep].view(len(keep), nh, hd)[:, :, vals].reshape(len(keep), -1))
        hidden = top(row_l1(m.gate_proj.weight) + row_l1(m.up_proj.weight) + col_l1(m.down_proj.weight),
                     m.gate_proj.weight.shape[0] // r)
        sm.gate_proj.weight.copy_(m.gate_proj.weight[hidden][:, keep])
        sm.up_proj.weight.copy_(m.up_proj.weight[hidden][:, keep])
        sm.down_proj.weight.copy_(m.down_proj.weight[keep][:, hidden])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            getattr(block, norm).weight.copy_(getattr(src, norm).weight[keep])
