"""Side network initialization by structural pruning of the backbone (arXiv 2206.06522, Sec. 3.2: "we initialize
the side network from the pruned backbone"), in the decoder-only analogue of the authors' `fisher-v2` path
(ylsung/Ladder-Side-Tuning: seq2seq/pruning/fisher.py `compute_fisher`, seq2seq/pruning/pruning_methods.py
`pruning_without_residual`, version 2).

Importance of every backbone weight entry w (`peft.init=fisher`, the default), over N training samples x_n taken
one at a time (the reference: batch size 1, shuffled, `samples_for_fisher`, default 1024; here
`peft.fisher_samples`):

    F(w) = sum_n ( d loss(x_n) / d w )^2          (empirical Fisher information, "label" sampling, squared grads)

where loss(x_n) is the sample's own training loss (mean cross-entropy over its trained tokens). `peft.init=
magnitude` uses |w| instead (the reference's non-Fisher path prunes by the weights themselves). The side network
then keeps, with `top_k(score)` the k largest entries of a score vector and every score an L1 (here: a sum, all
scores being >= 0) over the inputs that are kept:

    residual dims  (d/r, one set):   sum over kept layers of every score reading (q, k, v, gate, up columns) or
                                     writing (o, down rows) that dimension
    RoPE pairs     (hd/2r, one set): sum over kept layers of P_q(j) * P_k(j), P(j) = the scores of rows (head, j)
                                     and (head, j + hd/2) of every head, at the kept residual columns
    value dims     (hd/r, per layer): the v rows' scores of every KV head, at the kept residual columns
    MLP units      (d_ff/r, per layer): sum over the kept columns of F_gate * F_up (entrywise product)

Where this follows the reference, line by line:
- F is the sum over samples of squared per-sample gradients of the training loss (`calculate_the_importance_label`,
  grad_type "square", the first N samples of a shuffled training set); the reference takes them with batch size 1,
  here 8 samples share a forward/backward and each sample's weight gradient is formed from its own rows (exact,
  see `fisher_scores`), which is several times faster on a CPU;
- a group of linears that share their output units is scored by the entrywise product of its members' scores
  (q * k * v there; gate * up for the Llama MLP, q, k per RoPE pair here), then the L1 over the kept inputs
  (`L1Strategy` on `prod_imp` after `select_weights(..., previous idxs)`); the group's consumer (o for v, down for
  gate/up) keeps the matching input columns; norms keep the entries of the kept dimensions; one cut to 1/r
  (version 2: a single pruning step, `prune_vals = [1 - 1/r]`).
Where it departs, and why:
- residual stream: the reference picks the first set from the embedding's Fisher and then a new set after every
  linear, ignoring the residual additions ("without_residual"); a Llama block adds its o/down outputs into the
  residual stream it reads, so the side network keeps ONE set of residual dimensions for all blocks, scored by
  every weight that reads or writes it, and the pruned blocks compute a consistent smaller function (with r=1
  they recompute the backbone exactly);
- attention rows: T5 has no rotary embedding, so the reference picks q/k/v rows freely; here q/k keep whole RoPE
  pairs at the same positions in every head (the side network shares one rotary embedding, whose frequencies
  become the kept pairs' backbone frequencies), v keeps hd/r dimensions shared by every head; with grouped-query
  attention q and k differ in shape, so their pair scores multiply after the sum over heads;
- only the kept layers (layer dropping) are scored and copied (the reference prunes every block, then loads
  the kept ones);
- ladders and up-projection (tuneforge's own choice; the reference leaves them at nn.Linear's random init): the
  ladders start as the selections of the kept residual dimensions, down(h) = h[kept], so the pruned blocks read
  the coordinates they were pruned for, and `up` starts as the matching scatter back to d, so with r=1 and closed
  gates (mu = 0) the LM head reads exactly the backbone's final hidden state; biases start at zero;
- Qwen3's per-head q/k norms are not pruned (they start at ones).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tuneforge.data.batching import collate, packed_attention_mask
from tuneforge.data.encode import IGNORE
from tuneforge.peft.lst.layer import head_dim

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def key(i: int, linear: str) -> str:
    """Score name of layer i's linear weight (its name inside `decoder.layers`)."""
    return f"{i}.{linear}.weight"


def magnitude_scores(decoder, layers: list[int]) -> dict[str, torch.Tensor]:
    return {key(i, m): decoder.layers[i].get_submodule(m).weight.detach().abs().float() for i in layers for m in LINEARS}


FISHER_BATCH = 8  # samples per forward/backward; their gradients are still taken one sample at a time (below)


def batch_loss(decoder, head, batch: dict) -> torch.Tensor:
    """Sum over the batch's samples of each sample's training loss (mean next-token cross-entropy over its own
    trained tokens), so that the gradient reaching sample n's activations is the gradient of its own loss."""
    device = next(decoder.parameters()).device
    ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    mask, pos = batch.get("attention_mask"), batch.get("position_ids")
    if "segments" in batch:  # packed sequences: positions restart and attention stays within each sample
        sdpa = getattr(decoder.config, "_attn_implementation", "sdpa") == "sdpa"
        mask = packed_attention_mask(batch["segments"], None if sdpa else head.weight.dtype)
    hidden = decoder(input_ids=ids, attention_mask=None if mask is None else mask.to(device),
                     position_ids=None if pos is None else pos.to(device), use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    tokens = F.cross_entropy(head(hidden[:, :-1][keep]).float(), target[keep], reduction="none")
    per_sample = (1.0 / keep.sum(1).clamp(min=1))[:, None].expand_as(keep)[keep]
    return (tokens * per_sample).sum()


def fisher_scores(model, samples, layers: list[int], log=None, device=None) -> dict[str, torch.Tensor]:
    """F(w) = sum over `samples` of the squared gradient of each sample's own loss, for the linear weights of the
    backbone layers `layers` (fp32, returned on the CPU). `model`: the plain causal LM (before the side network is
    attached); with `device` (e.g. "cuda", as the reference does when a GPU is present) it is moved there for the
    computation and back afterwards.

    The reference runs one sample per forward/backward. Here FISHER_BATCH samples share one (padded) forward and
    backward, and each weight's per-sample gradient is formed from that sample's rows only: for a linear layer
    y = x W^T (+ b), d loss_n / d W = sum_t dy_{n,t} x_{n,t}^T (padding rows have dy = 0), squared and summed
    over n. No weight gradient is accumulated by autograd (the weights stay frozen; the embedding output is made
    the leaf that requires grad), so memory is one fp32 accumulator per weight plus one batch of per-sample
    gradients of one matrix at a time."""
    home = next(model.parameters()).device
    if device is not None:
        model.to(device)
    try:
        return {n: a.cpu() for n, a in _fisher(model, samples, layers, log).items()}
    finally:
        model.to(home)


def _fisher(model, samples, layers, log):
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    mods = {key(i, m): decoder.layers[i].get_submodule(m) for i in layers for m in LINEARS}
    acc = {n: torch.zeros_like(mod.weight, dtype=torch.float32) for n, mod in mods.items()}
    flags = {p: p.requires_grad for p in model.parameters()}

    def per_sample(n):
        def hook(mod, args, out):
            x = args[0].detach()

            def square_into(dy):  # dy: (batch, tokens, out) -> per-sample gradients (batch, out, in)
                acc[n].add_(torch.einsum("bto,bti->boi", dy.float(), x.float()).square().sum(0))
            out.register_hook(square_into)
        return hook

    def leaf(mod, args, out):
        return out.detach().requires_grad_(True)

    handles = [mod.register_forward_hook(per_sample(n)) for n, mod in mods.items()]
    handles.append(model.get_input_embeddings().register_forward_hook(leaf))
    was_training = model.training
    t0, batches = time.time(), range(0, len(samples), FISHER_BATCH)
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            for b, start in enumerate(batches, 1):
                batch_loss(decoder, head, collate(samples[start:start + FISHER_BATCH], 0)).backward()
                if log and (b % max(1, len(batches) // 4) == 0 or b == len(batches)):
                    log(f"lst: Fisher information {min(start + FISHER_BATCH, len(samples))}/{len(samples)} samples "
                        f"({time.time() - t0:.1f}s)")
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return acc


def top(score: torch.Tensor, k: int) -> torch.Tensor:
    return score.topk(k).indices.sort().values


def select(config, scores: dict[str, torch.Tensor], r: int, layers: list[int]) -> dict:
    """The kept residual dimensions, RoPE pairs, and per kept layer value dimensions and MLP units (JSON-able)."""
    hd, nh, nkv = head_dim(config), config.num_attention_heads, config.num_key_value_heads

    def s(i, m):
        return scores[key(i, m)]

    reads, writes = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"), \
        ("self_attn.o_proj", "mlp.down_proj")
    residual = top(sum(sum(s(i, m).sum(0) for m in reads) + sum(s(i, m).sum(1) for m in writes) for i in layers),
                   config.hidden_size // r)

    def pair(w, heads):  # rows (head, j) and (head, j + hd/2) of every head, at the kept columns
        return w[:, residual].reshape(heads, 2, hd // 2, -1).sum((0, 1, 3))

    pairs = top(sum(pair(s(i, "self_attn.q_proj"), nh) * pair(s(i, "self_attn.k_proj"), nkv) for i in layers),
                hd // (2 * r))
    values = [top(s(i, "self_attn.v_proj")[:, residual].reshape(nkv, hd, -1).sum((0, 2)), hd // r) for i in layers]
    units = [top((s(i, "mlp.gate_proj")[:, residual] * s(i, "mlp.up_proj")[:, residual]).sum(1),
                 config.intermediate_size // r) for i in layers]
    return {"layers": list(layers), "residual": residual.tolist(), "rope_pairs": pairs.tolist(),
            "values": [v.tolist() for v in values], "mlp_units": [u.tolist() for u in units]}


def head_rows(w: torch.Tensor, heads: int, hd: int, dims: torch.Tensor) -> torch.Tensor:
    """The rows of a (heads * hd, ...) projection keeping `dims` of every head."""
    return w.view(heads, hd, -1)[:, dims].reshape(heads * len(dims), -1)


@torch.no_grad()
def init_from_backbone(side, decoder, sel: dict) -> None:
    """Copy the selected sub-matrices of the backbone's kept layers into the side network (see the module doc)."""
    cfg = decoder.config
    hd, nh, nkv = head_dim(cfg), cfg.num_attention_heads, cfg.num_key_value_heads
    keep = torch.tensor(sel["residual"])
    pairs = torch.tensor(sel["rope_pairs"])
    rope = torch.cat([pairs, pairs + hd // 2])
    side.rotary_emb.inv_freq.copy_(decoder.rotary_emb.inv_freq[pairs])
    side.rotary_emb.original_inv_freq.copy_(side.rotary_emb.inv_freq)
    rows = torch.arange(len(keep))
    for down in side.downs:
        down.weight.zero_()
        down.weight[rows, keep] = 1.0
        down.bias.zero_()
    side.up.weight.zero_()
    side.up.bias.zero_()
    side.up.weight[keep, rows] = 1.0
    side.norm.weight.copy_(decoder.norm.weight[keep])
    for i, vals, units, block in zip(sel["layers"], sel["values"], sel["mlp_units"], side.layers):
        src = decoder.layers[i]
        a, m, sa, sm = src.self_attn, src.mlp, block.self_attn, block.mlp
        vals, units = torch.tensor(vals), torch.tensor(units)
        for dst, w, heads, dims in ((sa.q_proj, a.q_proj, nh, rope), (sa.k_proj, a.k_proj, nkv, rope),
                                    (sa.v_proj, a.v_proj, nkv, vals)):
            dst.weight.copy_(head_rows(w.weight, heads, hd, dims)[:, keep])
            if w.bias is not None:
                dst.bias.copy_(head_rows(w.bias[:, None], heads, hd, dims)[:, 0])
        sa.o_proj.weight.copy_(a.o_proj.weight[keep].view(len(keep), nh, hd)[:, :, vals].reshape(len(keep), -1))
        sm.gate_proj.weight.copy_(m.gate_proj.weight[units][:, keep])
        sm.up_proj.weight.copy_(m.up_proj.weight[units][:, keep])
        sm.down_proj.weight.copy_(m.down_proj.weight[keep][:, units])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            getattr(block, norm).weight.copy_(getattr(src, norm).weight[keep])
