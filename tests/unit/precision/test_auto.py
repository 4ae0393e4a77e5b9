"""precision=auto: bf16 where the hardware is fast at it, fp32 elsewhere; decided once and written into the run.
A CPU without (or with) AVX512-BF16 is simulated with TUNEFORGE_CPU_FLAGS, which the detection honours."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import train_here, train_losses
from tuneforge.config.compose import build_specs, compose
from tuneforge.hardware import fast_bf16
from tuneforge.precision.modes import resolve

CPUS = {"avx512_bf16": ("fpu sse2 avx2 avx512f avx512_bf16", "bf16", "AVX512-BF16"),
        "amx": ("fpu avx2 amx_bf16 amx_tile", "bf16", "AMX-BF16"),
        "avx2 only": ("fpu sse2 avx2 fma", "fp32", "neither AMX-BF16 nor AVX512-BF16")}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_auto_picks_bf16_only_on_cpus_fast_at_it(monkeypatch, cpu):
    flags, want, why = CPUS[cpu]
    monkeypatch.setenv("TUNEFORGE_CPU_FLAGS", flags)
    assert fast_bf16("cpu")[0] == (want == "bf16")
    spec = build_specs(compose(["precision=auto"]))["precision"]
    assert spec.compute == "auto"
    chosen = resolve(spec, "cpu")
    assert spec.compute == want and chosen.startswith(f"{want} (auto: ") and why in chosen
    assert resolve(spec, "cpu") is None  # decided once: an explicit dtype is never re-decided


def test_recipes_that_pin_no_precision_use_auto_and_explicit_ones_are_kept():
    assert build_specs(compose([]))["precision"].compute == "auto"
    assert resolve(build_specs(compose(["precision=fp32"]))["precision"], "cpu") is None


@pytest.mark.parametrize("cpu", ["avx512_bf16", "avx2 only"])
def test_a_run_records_and_prints_the_choice(tmp_path, monkeypatch, cpu):
    """The run's config.yaml holds the decision (ranks, resume, eval and export read it) and its first line says it."""
    flags, want, why = CPUS[cpu]
    monkeypatch.setenv("TUNEFORGE_CPU_FLAGS", flags)
    run = train_here("recipe=quickstart_tiny", "precision=auto", "trainer.max_steps=2", "data.n_train=8",
                     "trainer.eval_at_start=false", "trainer.max_new_tokens=1", out=tmp_path / "run")
    p = OmegaConf.load(run / "config.yaml").precision
    assert p.name == "auto" and p.compute == want and why in p.chosen
    first = (run / "train.log").read_text().splitlines()[0]
    assert f"precision={want} (auto: " in first and why in first, first
    assert len(train_losses(run)) == 2


@pytest.mark.parametrize("cpu", ["avx512_bf16", "avx2 only"])
def test_the_offline_evaluator_decides_auto_too(monkeypatch, cpu):
    """Merge search and benches evaluate from a fresh compose, where no run has decided precision=auto yet."""
    from tuneforge.models.load import load_model, load_tokenizer
    from tuneforge.runner.offline import evaluator

    flags, want, _ = CPUS[cpu]
    monkeypatch.setenv("TUNEFORGE_CPU_FLAGS", flags)
    specs = build_specs(compose(["recipe=quickstart_tiny", "precision=auto", "data.n_eval=2",
                                 "trainer.max_new_tokens=2"]))
    tok = load_tokenizer(specs["model"])
    row = evaluator(specs, tok)(load_model(specs["model"], seed=0, vocab_size=len(tok)).eval())
    assert specs["precision"].compute == want and row["eval_loss"] > 0
