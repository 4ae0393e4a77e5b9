"""LM head + cross-entropy in chunks of tokens, recomputed in backward: no [tokens, vocab] tensor is ever kept.

The plain path (`F.cross_entropy(head(h).float(), y)`) keeps, per micro-batch, the logits in the compute dtype,
their fp32 copy and the fp32 log-softmax for backward, and builds an fp32 gradient of the same size in backward:
4-5 copies of tokens x vocab (SmolLM2: 49,152 x 4 bytes = 192 KB per token). `head_loss` computes each chunk's
logits, reduces them to per-token log-sum-exp and target logit, and frees them; backward recomputes each chunk's
logits and turns them into that chunk's gradient, so at most one chunk's logits exist at a time, at the cost of
the head's forward matmul once more (~1/3 of the head's compute; the head is a small part of a step's).

The numbers are those of the plain path: logits are computed in the same dtype (the autocast dtype when
autocast is on, as `nn.Linear` would), the loss in fp32 from them, and the gradients flow back in the compute
dtype, as autograd would from the fp32 cast; `tests/unit/models/test_chunked_loss.py` holds the two together.
Only a plain `nn.Linear` head qualifies (`chunkable`): a head with adapters, quantized, or partitioned by
ZeRO-3 goes the plain way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def chunkable(head: nn.Module | None) -> bool:
    """A plain Linear head whose weight this process holds whole (not a ZeRO-3 partition)."""
    return type(head) is nn.Linear and not hasattr(head.weight, "ds_id")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk: int, dtype):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        for s in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[s:s + chunk].to(dtype), w, b).float()
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[s:s + chunk, None]).squeeze(1)
            total += (lse[s:s + chunk] - picked).sum()
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, bias, target, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_hidden = torch.empty_like(hidden) if need_h else None
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        g_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(dtype)
            logits = F.linear(h, w, b).float()
            grad = torch.exp_(logits.sub_(lse[s:s + chunk, None]))  # softmax, in place
            grad.scatter_add_(1, target[s:s + chunk, None], torch.full_like(lse[s:s + chunk, None], -1.0))
            grad = grad.mul_(grad_total).to(dtype)
            if need_h:
                g_hidden[s:s + chunk] = (grad @ w).to(hidden.dtype)
            if need_w:
                g_weight += (grad.t() @ h).float()
            if need_b:
                g_bias += grad.float().sum(0)
        return (g_hidden, None if g_weight is None else g_weight.to(weight.dtype),
                None if g_bias is None else g_bias.to(bias.dtype), None, None, None)


def head_loss(hidden: torch.Tensor, head: nn.Linear, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed next-token cross-entropy of `target` [N] given `hidden` [N, H] through `head`, `chunk` tokens at a
    time (no target may be -100: select the trained positions first)."""
    return _HeadLoss.apply(hidden, head.weight, head.bias, target, max(1, chunk), _compute_dtype(hidden))
