"""The objective equals Hugging Face's own loss; packing never lets samples attend to each other."""

from __future__ import annotations

import pytest
import torch

from tuneforge.config.compose import build_specs, compose
from tuneforge.data.batching import collate
from tuneforge.data.encode import encode, pack
from tuneforge.data.rows import Example, RowReport
from tuneforge.models.unpad import STRETCH_MULTIPLE
from tuneforge.runner.objective import CausalLM


@pytest.fixture(scope="module")
def samples(tokenizer):
    spec = build_specs(compose(["data=jsonl", "data.path=pkg://tuneforge/data/examples/jsonl.jsonl"]))["data"]
    rows = [Example(messages=[{"role": "user", "content": f"question {i} " * (i + 1)},
                              {"role": "assistant", "content": f"answer {i}"}], source=str(i)) for i in range(4)]
    return encode(rows, tokenizer, spec, RowReport())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sparse_head_loss_equals_hf_loss(tiny_model_factory, tokenizer, samples, attn):
    model = tiny_model_factory(0, f"model.attn_implementation={attn}")
    obj = CausalLM(model)
    assert obj.sparse_head
    batch = collate(samples, tokenizer.pad_token_id)
    assert obj._mask(batch["attention_mask"], None) is None  # right padding: the causal kernel, no padding mask
    ours = obj(**batch)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # the reference: HF's own loss on the padded batch with its padding mask
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    hf.backward()
    torch.testing.assert_close(ours, hf, rtol=1e-6, atol=1e-6)
    for mine, ref in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    model.zero_grad()
    obj.sparse_head = False
    torch.testing.assert_close(obj(**batch), hf, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_separate(tiny_model_factory, tokenizer, samples, attn):
    obj = CausalLM(tiny_model_factory(0, f"model.attn_implementation={attn}")).eval()
    separate = [obj(**collate([s], tokenizer.pad_token_id), reduction="sum") for s in samples]
    total = torch.stack(separate).sum(0)
    packed = pack(samples, max_length=10_000)
    assert len(packed) == 1
    # pack's boundary masking drops the first label of each sample; those are prompt tokens here
    got = obj(**collate(packed, tokenizer.pad_token_id), reduction="sum")
    torch.testing.assert_close(got, total, rtol=1e-5, atol=1e-4)
    # and with padding in the batch (a second, shorter pack)
    two = pack(samples, max_length=sum(len(s.input_ids) for s in samples[:3]))
    got2 = obj(**collate(two, tokenizer.pad_token_id), reduction="sum")
    torch.testing.assert_close(got2, total, rtol=1e-5, atol=1e-4)


def test_split_micro_batches_give_the_one_big_batch_loss_and_gradient(tiny_model_factory, tokenizer):
    """Each micro-batch's summed token loss over (global trained tokens / number of micro-batches), averaged
    over the micro-batches as DeepSpeed averages their gradients (1/grad_accum, mean over ranks), is Hugging
    Face's loss of the one big batch, with its gradient. Each micro-batch's own token mean is not."""
    spec = build_specs(compose(["data=jsonl", "data.path=pkg://tuneforge/data/examples/jsonl.jsonl"]))["data"]
    rows = [Example(messages=[{"role": "user", "content": "list"}, {"role": "assistant", "content": "word " * n}],
                    source=str(n)) for n in (1, 60, 4, 30)]
    samples = encode(rows, tokenizer, spec, RowReport())
    model = tiny_model_factory(0)
    obj, params = CausalLM(model), [p for p in model.parameters() if p.requires_grad]
    big = collate(samples, tokenizer.pad_token_id)
    ref = model(input_ids=big["input_ids"], attention_mask=big["attention_mask"], labels=big["labels"]).loss
    ref_grads = torch.autograd.grad(ref, params)
    n_tokens = int((big["labels"][:, 1:] != -100).sum())
    for micro in (1, 2):
        parts = [collate(samples[i:i + micro], tokenizer.pad_token_id) for i in range(0, len(samples), micro)]
        loss = torch.stack([obj(**p, divisor=n_tokens / len(parts)) for p in parts]).mean()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        for got, want in zip(torch.autograd.grad(loss, params), ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            mean_of_means = torch.stack([obj(**p) for p in parts]).mean()
        assert abs(mean_of_means - ref) > 1e-4  # the old normalisation (short samples weigh more): not float noise


def test_sample_weights_scale_each_samples_token_losses_whatever_the_split(tiny_model_factory, tokenizer, samples):
    """With per-sample weights w, the loss is sum_i w_i sum_t l_it / (all trained tokens), computed here from Hugging
    Face's per-token losses; split into micro-batches (each over the global divisor) it is the same loss."""
    from dataclasses import replace

    model = tiny_model_factory(0)
    obj, w = CausalLM(model), [1.0, 0.5, 0.0, 2.0]
    weighted = [replace(s, weight=x) for s, x in zip(samples, w)]
    batch = collate(weighted, tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    per = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), target, reduction="none", ignore_index=-100)
    n = int((target != -100).sum())
    want = sum(x * per[i].sum() for i, x in enumerate(w)) / n
    torch.testing.assert_close(obj(**batch), want, rtol=1e-6, atol=1e-6)
    parts = [collate(weighted[i:i + 1], tokenizer.pad_token_id) for i in range(4)]
    torch.testing.assert_close(torch.stack([obj(**p, divisor=n / 4) for p in parts]).mean(), want, rtol=1e-6, atol=1e-6)
    assert "weights" not in collate(samples, tokenizer.pad_token_id)  # unweighted samples: the plain loss


def _hf_loss_and_grads(model, batch):
    """The reference: Hugging Face's own loss on the padded batch under its padding mask, and its gradients."""
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def _decoder_inputs(model):
    """Record the shape of every input_ids the decoder's embedding receives."""
    shapes = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("preset", ["tiny_llama", "tiny_gqa"])
def test_unpadded_micro_batch_runs_as_one_row_and_equals_the_padded_loss(tiny_model_factory, tokenizer, samples,
                                                                         preset):
    """The decoder sees one row (each sample, then fillers up to a multiple of STRETCH_MULTIPLE; no padding to the
    longest sample), and the loss and every gradient are Hugging Face's masked forward's on the padded batch; also
    under gradient checkpointing (the layers recompute with the same stretches)."""
    model = tiny_model_factory(0, f"model={preset}")
    obj, params = CausalLM(model), [p for p in model.parameters() if p.requires_grad]
    assert obj.unpad
    batch = collate(samples, tokenizer.pad_token_id)
    lengths = batch["attention_mask"].sum(1)
    row = int(sum(-(-n // STRETCH_MULTIPLE) * STRETCH_MULTIPLE for n in lengths.tolist()))  # samples + their fillers
    assert int(lengths.sum()) < batch["input_ids"].numel()  # the samples differ in length: the batch has padding
    want, want_grads = _hf_loss_and_grads(model, batch)
    shapes = _decoder_inputs(model)
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable()
        shapes.clear()
        got = obj(**batch)
        assert shapes == [(1, row)]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for g, w in zip(torch.autograd.grad(got, params), want_grads):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert not CausalLM(tiny_model_factory(0, f"model={preset}"), unpad=False).unpad


def test_unpadded_attention_keeps_a_sliding_window(tokenizer, samples):
    """A decoder with a sliding window shorter than the samples (Mistral's): each sample's stretch gets the band,
    as Hugging Face's sliding-window mask on the padded batch gives it."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=4, attn_implementation="sdpa")
    model = MistralForCausalLM(cfg)
    batch = collate(samples, tokenizer.pad_token_id)
    assert int(batch["attention_mask"].sum(1).min()) > 4
    want, _ = _hf_loss_and_grads(model, batch)
    obj = CausalLM(model)
    assert obj.unpad
    torch.testing.assert_close(obj(**batch), want, rtol=1e-6, atol=1e-6)
    model.config.sliding_window = None  # the window matters here: without it the loss differs
    assert abs(obj(**batch) - want) > 1e-4


def test_unpad_lays_samples_end_to_end():
    """Two right-padded rows and one packed row (segments 1, 2, then padding), written out by hand."""
    from tuneforge.models.unpad import unpad

    ids, mask = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ids_, pos, cu, index = unpad(ids, attention_mask=mask, multiple=1)
    assert ids_.tolist() == [[5, 6, 7, 8, 9]] and pos.tolist() == [[0, 1, 2, 0, 1]] and cu.tolist() == [0, 3, 5]
    assert index.tolist() == [[0, 1, 2, -1], [3, 4, -1, -1]]
    ids_, pos, cu, index = unpad(ids, attention_mask=mask, multiple=4)  # each sample, then fillers up to 4
    assert ids_.tolist() == [[5, 6, 7, 0, 8, 9, 0, 0]] and pos.tolist() == [[0, 1, 2, 0, 0, 1, 0, 0]]
    assert cu.tolist() == [0, 4, 8] and index.tolist() == [[0, 1, 2, -1], [4, 5, -1, -1]]
    packed = torch.tensor([[5, 6, 7, 8, 9, 0]])
    ids_, pos, cu, index = unpad(packed, position_ids=torch.tensor([[0, 1, 0, 1, 2, 0]]),
                                 segments=torch.tensor([[1, 1, 2, 2, 2, 0]]), multiple=1)
    assert ids_.tolist() == [[5, 6, 7, 8, 9]] and pos.tolist() == [[0, 1, 0, 1, 2]] and cu.tolist() == [0, 2, 5]
    assert index.tolist() == [[0, 1, 2, 3, 4, -1]]
