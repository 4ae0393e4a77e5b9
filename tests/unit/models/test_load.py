"""Model references: packaged GGUF, local dirs, hub ids without a hub, missing paths."""

from __future__ import annotations

import pytest

from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import RunError
from tuneforge.models.load import load_model, materialize, preflight


def spec(*overrides):
    return build_specs(compose(list(overrides)))["model"]


def test_missing_local_path_is_a_preflight_problem(tmp_path):
    (p,) = preflight(spec("model.path=/nonexistent/model"))
    assert "no such file or directory" in p and "model.path" in p
    (tmp_path / "empty").mkdir()
    (p,) = preflight(spec(f"model.path={tmp_path / 'empty'}"))
    assert "no config.json" in p


def test_hub_id_is_not_checked_in_preflight_and_fails_clearly_at_load(monkeypatch):
    s = spec("model=llama2_7b")
    assert preflight(s) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RunError, match=r"model.path=meta-llama/Llama-2-7b-hf is a Hugging Face Hub id.*set model.path=DIR"):
        load_model(s, seed=0, vocab_size=32000)


def test_packaged_gguf_converts_once_to_safetensors():
    first = materialize(spec().path)
    assert first == materialize(spec().path)  # cached
    from pathlib import Path

    files = {p.name for p in Path(first).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files


def test_random_init_is_seeded(tiny_model_factory):
    a, b, c = tiny_model_factory(1), tiny_model_factory(1), tiny_model_factory(2)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert wa.equal(wb) and not wa.equal(wc)
