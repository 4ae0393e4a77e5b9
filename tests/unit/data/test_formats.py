"""File formats, malformed-row reports (reason + file:line), bad-row policy, eval split."""

from __future__ import annotations

import json

import pytest

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError

EXAMPLES = "pkg://tuneforge/data/examples"


def load(*overrides, seed=0):
    spec = build_specs(compose(list(overrides)))["data"]
    return registry.build("data", spec).load(seed)


@pytest.mark.parametrize("name,ext", [("jsonl", "jsonl"), ("alpaca", "jsonl"), ("chat", "jsonl"),
                                      ("sharegpt", "jsonl"), ("qa", "jsonl"), ("text", "txt")])
def test_every_format_loads_its_sample(name, ext):
    d = load(f"data={name}", f"data.path={EXAMPLES}/{name}.{ext}", "data.eval_split=4")
    assert len(d.eval) == 4 and len(d.train) >= 8 and d.report.bad == 0
    ex = d.train[0]
    if name == "text":
        assert ex.text and ex.messages is None
    else:
        assert ex.messages[-1]["role"] == "assistant" and any(m["role"] == "user" for m in ex.messages)
        assert ex.source.startswith(f"{name}.")


def test_sharegpt_roles_are_mapped_and_multi_turn_kept():
    d = load("data=sharegpt", f"data.path={EXAMPLES}/sharegpt.jsonl", "data.eval_split=0")
    assert [m["role"] for m in d.train[0].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_qa_extracts_final_answer():
    d = load("data=qa", f"data.path={EXAMPLES}/qa.jsonl", "data.eval_split=0")
    ex = d.train[0]
    assert "####" in ex.messages[-1]["content"] and ex.answer.isdigit()


@pytest.fixture
def broken_file(tmp_path):
    rows = [
        json.dumps({"instruction": "Say hi", "output": "hi"}),
        "{not json",
        json.dumps({"instruction": "No output here"}),
        json.dumps({"instruction": "", "output": "empty instruction"}),
        json.dumps({"instruction": "Say bye", "output": "bye"}),
        json.dumps({"instruction": ["a list"], "output": "x"}),
        json.dumps({"instruction": "Count", "output": "1 2 3"}),
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_malformed_rows_counted_per_reason_with_location(broken_file):
    d = load("data=alpaca", f"data.path={broken_file}", "data.eval_split=0")
    assert len(d.train) == 3
    where = d.report.where
    assert where["bad JSON"] == ["broken.jsonl:2"]
    assert where["missing field 'output'"] == ["broken.jsonl:3"]
    assert where["empty field 'instruction'"] == ["broken.jsonl:4"]
    assert where["field 'instruction' is not text"] == ["broken.jsonl:6"]
    assert any("bad JSON x1: broken.jsonl:2" in line for line in d.report.lines())


def test_bad_rows_error_policy_lists_every_reason(broken_file):
    with pytest.raises(InputError) as e:
        load("data=alpaca", f"data.path={broken_file}", "data.bad_rows=error")
    text = e.value.render()
    assert "broken.jsonl:2" in text and "broken.jsonl:3" in text and "data.bad_rows=skip" in text


def test_no_valid_rows_fails(tmp_path):
    path = tmp_path / "none.jsonl"
    path.write_text("{oops\n" + json.dumps({"prompt": "only prompt"}) + "\n")
    with pytest.raises(InputError, match="no valid training rows"):
        load("data=jsonl", f"data.path={path}")


def test_missing_file_and_missing_path():
    with pytest.raises(InputError, match="data file not found"):
        load("data=jsonl", "data.path=/nonexistent/train.jsonl")
    with pytest.raises(InputError, match="data.path is required for data=alpaca"):
        compose(["data=alpaca"])


def test_eval_split_is_deterministic_and_disjoint():
    a = load("data=alpaca", f"data.path={EXAMPLES}/alpaca.jsonl", "data.eval_split=0.25", seed=3)
    b = load("data=alpaca", f"data.path={EXAMPLES}/alpaca.jsonl", "data.eval_split=0.25", seed=3)
    assert [e.source for e in a.eval] == [e.source for e in b.eval]
    assert not {e.source for e in a.eval} & {e.source for e in a.train}
    assert len(a.eval) == round(0.25 * (len(a.eval) + len(a.train)))
