"""The chunked LM head + loss (its gradient made in forward) gives the plain path's loss and gradients."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tuneforge.data.batching import collate
from tuneforge.data.encode import Sample
from tuneforge.models.chunked_loss import chunkable
from tuneforge.runner.objective import CausalLM


def batch(vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    samples = []
    for n, answer in ((23, 7), (31, 12), (9, 4)):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        samples.append(Sample(ids, [-100] * (n - answer) + ids[n - answer:]))
    return collate(samples, 0)


def grads(obj, b, autocast) -> tuple[torch.Tensor, dict]:
    obj.zero_grad(set_to_none=True)
    with autocast:
        loss = obj(**b)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("head", ["trained", "frozen"])
def test_chunked_equals_plain(tiny_model_factory, tokenizer, compute, head):
    model = tiny_model_factory(0)
    if head == "frozen":  # e.g. LoRA: only the layers train, gradients still flow through the head
        model.get_output_embeddings().weight.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(False)
    b = batch(len(tokenizer))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if compute == "bf16" else contextlib.nullcontext())
    plain = grads(CausalLM(model, loss_chunk=0), b, autocast)
    chunked = grads(CausalLM(model, loss_chunk=5), b, autocast)  # 23 trained tokens: 5 chunks, the last short
    tol = {"rtol": 1e-5, "atol": 1e-6} if compute == "fp32" else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(chunked[0], plain[0], **tol)
    assert chunked[1].keys() == plain[1].keys() and plain[1]
    for name in plain[1]:
        torch.testing.assert_close(chunked[1][name], plain[1][name], **tol, msg=name)


def test_only_plain_linear_heads_are_chunked(tiny_model_factory):
    head = tiny_model_factory(0).get_output_embeddings()
    assert chunkable(head)
    assert not chunkable(torch.nn.Sequential(head))
    head.weight.ds_id = 0  # a ZeRO-3 partitioned weight: its module's hooks gather it, a bare matmul cannot
    assert not chunkable(head)


def test_gradients_made_in_forward_scale_with_the_incoming_gradient():
    """The gradient is made in forward with an incoming gradient of 1, so backward must scale it: compared with
    cross-entropy's own autograd (bias and a trained weight included) under an arbitrary scale, and under no_grad
    the loss is the same."""
    from tuneforge.models.chunked_loss import head_loss

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(7, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 11, (7,), generator=g)

    ref_loss = torch.nn.functional.cross_entropy(head(hidden), target, reduction="sum")
    (2.5 * ref_loss).backward()
    ref = [t.grad.clone() for t in (hidden, head.weight, head.bias)]
    for t in (hidden, head.weight, head.bias):
        t.grad = None

    loss = head_loss(hidden, head, target, chunk=3)
    (2.5 * loss).backward()
    torch.testing.assert_close(loss, ref_loss)
    for got, want in zip((hidden.grad, head.weight.grad, head.bias.grad), ref):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(head_loss(hidden, head, target, chunk=3), ref_loss.detach())
