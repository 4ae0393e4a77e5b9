"""Chat rendering with the tokenizer's own template; loss only on assistant tokens; over-length policies."""

from __future__ import annotations

import pytest

from tuneforge.config.compose import build_specs, compose
from tuneforge.data.encode import IGNORE, encode, encode_chat, generation_prompt, pack
from tuneforge.data.rows import Example, RowReport
from tuneforge.errors import InputError


def trained_text(tok, ids, labels):
    return tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE])


def test_only_assistant_turns_are_trained(tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Peru?"},
            {"role": "assistant", "content": "Lima"}, {"role": "user", "content": "And Chile?"},
            {"role": "assistant", "content": "Santiago"}]
    ids, labels = encode_chat(tokenizer, msgs)
    assert ids == tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    trained = trained_text(tokenizer, ids, labels)
    assert trained == "Lima<|im_end|>\nSantiago<|im_end|>\n"
    # Nothing of the system or user turns, nor the role headers, is trained.
    for text in ("Be brief", "Capital", "Chile", "user", "assistant"):
        assert text not in trained


def data_spec(*overrides):
    return build_specs(compose(["data=jsonl", "data.path=pkg://tuneforge/data/examples/jsonl.jsonl", *overrides]))["data"]


def chat(i, n_words):
    return Example(messages=[{"role": "user", "content": "hi " * n_words}, {"role": "assistant", "content": "ok"}],
                   answer="ok", source=f"f.jsonl:{i}")


def test_overlength_drop_truncate_error(tokenizer):
    rows = [chat(1, 3), chat(2, 200), chat(3, 3)]
    report = RowReport()
    kept = encode(rows, tokenizer, data_spec("data.max_length=64", "data.overlength=drop"), report)
    assert [s.source for s in kept] == ["f.jsonl:1", "f.jsonl:3"]
    assert report.where["over max_length=64 (dropped)"] == ["f.jsonl:2"]

    report = RowReport()
    kept = encode(rows, tokenizer, data_spec("data.max_length=64", "data.overlength=truncate"), report)
    # truncating the long row cuts its answer away: it is reported, not trained on silently
    assert [s.source for s in kept] == ["f.jsonl:1", "f.jsonl:3"]
    assert list(report.where) == ["no trained tokens (empty or truncated-away response)"]
    assert all(len(s.input_ids) <= 64 for s in kept)

    with pytest.raises(InputError, match=r"f.jsonl:2 \(\d+ tokens\).*data.overlength=truncate"):
        encode(rows, tokenizer, data_spec("data.max_length=64", "data.overlength=error"), RowReport())


def test_system_prompt_and_generation_prompt(tokenizer):
    spec = data_spec("data.system_prompt=Answer briefly.")
    ex = chat(1, 2)
    prompt = generation_prompt(tokenizer, ex, spec)
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.") and prompt.endswith("<|im_start|>assistant\n")
    assert "ok" not in prompt.split("user")[-1]


def test_text_trains_every_token_and_ends_with_eos(tokenizer):
    spec = build_specs(compose(["data=text", "data.path=pkg://tuneforge/data/examples/text.txt"]))["data"]
    (s,) = encode([Example(text="hello world", source="t:1")], tokenizer, spec, RowReport())
    assert s.labels == s.input_ids and s.input_ids[-1] == tokenizer.eos_token_id


def test_pack_restarts_positions_and_masks_boundaries(tokenizer):
    spec = data_spec()
    samples = encode([chat(i, 2) for i in range(5)], tokenizer, spec, RowReport())
    n = len(samples[0].input_ids)
    packs = pack(samples, max_length=2 * n + 1)
    assert [len(p.input_ids) for p in packs] == [2 * n, 2 * n, n]
    p = packs[0]
    assert p.position_ids == list(range(n)) * 2 and p.segments == [1] * n + [2] * n
    assert p.labels[n] == IGNORE  # no prediction across the boundary
    assert p.labels[n + 1:] == samples[1].labels[1:]
