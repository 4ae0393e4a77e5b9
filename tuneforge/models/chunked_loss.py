"""LM head + cross-entropy in chunks of tokens, the gradient made in forward: no [tokens, vocab] tensor is kept.

The plain path (`F.cross_entropy(head(h).float(), y)`) keeps, per micro-batch, the logits in the compute dtype,
their fp32 copy and the fp32 log-softmax for backward, and builds an fp32 gradient of the same size in backward:
4-5 copies of tokens x vocab (SmolLM2: 49,152 x 4 bytes = 192 KB per token). `head_loss` computes each chunk's
logits, reduces them to per-token log-sum-exp and target logit, and, when gradients are wanted, turns them into
the chunk's gradient there and then: d(loss)/d(logits) = softmax - one-hot, through the head to the hidden states
(and the head's weight, if it trains). It keeps those gradients, [tokens, hidden], and frees the logits, so at
most one chunk's logits exist at a time. The loss is a sum, so backward only scales the kept gradients by the
incoming one. Against recomputing each chunk's logits in backward (the first version), this saves one head
matmul per chunk: the head's forward, ~1/3 of its compute (docs/performance.md).

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
    def forward(ctx, hidden, weight, bias, target, chunk: int, dtype, grads: bool):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3] if grads else (False, False, False)
        g_hidden = torch.empty_like(hidden) if need_h else None
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        g_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(dtype)
            t = target[s:s + chunk, None]
            logits = F.linear(h, w, b).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (lse - logits.gather(1, t)).sum()
            if not (need_h or need_w or need_b):
                continue
            # d(sum of losses)/d(logits) = softmax - one-hot: the chunk's gradient, made while its logits exist
            grad = torch.exp_(logits.sub_(lse))
            grad = grad.scatter_add_(1, t, torch.full_like(lse, -1.0)).to(dtype)
            if need_h:
                g_hidden[s:s + chunk] = grad @ w
            if need_w:
                g_weight += (grad.t() @ h).float()
            if need_b:
                g_bias += grad.float().sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # the loss is a sum, so its gradients are the forward's, scaled by the incoming one
        scaled = [None if g is None else (g.float() * grad_total).to(dt)
                  for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*scaled, None, None, None, None)


def head_loss(hidden: torch.Tensor, head: nn.Linear, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed next-token cross-entropy of `target` [N] given `hidden` [N, H] through `head`, `chunk` tokens at a
    time (no target may be -100: select the trained positions first)."""
    return _HeadLoss.apply(hidden, head.weight, head.bias, target, max(1, chunk), _compute_dtype(hidden),
                           torch.is_grad_enabled())
