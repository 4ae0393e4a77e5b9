"""The objective equals Hugging Face's own loss; packing never lets samples attend to each other."""

from __future__ import annotations

import pytest
import torch

from tuneforge.config.compose import build_specs, compose
from tuneforge.data.batching import collate
from tuneforge.data.encode import encode, pack
from tuneforge.data.rows import Example, RowReport
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
    ours = obj(**batch)
    hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(ours, hf, rtol=1e-6, atol=1e-6)
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
