"""The memory planner from the specs alone: hub presets from their card, the fitting search, `--json`, the
train-time summary and plan.strict, bad input. (Its accuracy against measured peaks: tests/integration/test_plan.py.)"""

from __future__ import annotations

import json

import pytest

from tuneforge.config.run import Run
from tuneforge.errors import InputError
from tuneforge.plan.planner import plan_run


def plan_of(*overrides):
    return plan_run(Run.compose(list(overrides)))


def test_a_hub_preset_is_planned_from_its_card_and_zero_stages_divide_model_states():
    """Llama-2-7B full fine-tuning in bf16 on 8 ranks: no weights download; ZeRO-2 divides gradients and
    optimizer states by the ranks, ZeRO-3 the weights too; the peak is the larger of the two moments."""
    base = ["recipe=full_llama7b_zero3", "plan.gpus=8", "plan.gpu_mem=80GB", "precision.params=bf16"]
    z2, z3 = plan_of(*base, "zero.stage=2"), plan_of(*base, "zero.stage=3")
    n = z2.terms["total_params"]
    assert 6.7e9 < n < 6.8e9
    assert z2.terms["weights"] == 2 * n
    assert z3.terms["weights"] < z2.terms["weights"] / 4
    assert z2.terms["optimizer"] == pytest.approx(12 * n / 8)  # fp32 moments + fp32 master, 1/8 each
    assert z3.peak == max(z3.terms["backward_start"], z3.terms["optimizer_step"])


def test_tuning_methods_change_the_trainable_set_the_states_follow():
    full = plan_of("recipe=lisa_llama7b", "peft=full", "plan.gpu_mem=80GB")
    lora = plan_of("recipe=lisa_llama7b", "peft=lora", "peft.r=128", "plan.gpu_mem=80GB")
    lisa1, lisa4 = (plan_of("recipe=lisa_llama7b", f"peft.gamma={g}", "plan.gpu_mem=80GB") for g in (1, 4))
    assert lora.terms["optimizer"] < lisa1.terms["optimizer"] < lisa4.terms["optimizer"] < full.terms["optimizer"]
    per_layer = (lisa4.terms["trainable"] - lisa1.terms["trainable"]) / 3
    assert per_layer == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096  # one Llama-2-7B block


def test_a_lora_base_trained_through_autocast_is_planned_in_the_compute_dtype():
    """precision=bf16 over fp32 weights: a LoRA run holds its frozen base linears in bf16 (precision/modes.py),
    two bytes less per element of every block's linear weights; DoRA reads the base for its norms and keeps fp32."""
    base = ["recipe=lora_llama7b", "plan.gpu_mem=80GB"]
    stored, kept = plan_of(*base), plan_of(*base, "precision.frozen_in_compute=false")
    linears = 32 * (4 * 4096**2 + 3 * 4096 * 11008)  # Llama-2-7B: q, k, v, o and the MLP's three
    assert kept.terms["weights"] - stored.terms["weights"] == 2 * linears
    dora = [plan_of(*base, "peft=dora", *x).terms["weights"] for x in ([], ["precision.frozen_in_compute=false"])]
    assert dora[0] == dora[1]


def test_checkpointing_and_micro_batch_shrink_activations():
    base = ["recipe=lisa_llama7b", "plan.gpu_mem=80GB", "model.gradient_checkpointing=false"]
    plain, ckpt = plan_of(*base), plan_of(*base[:-1], "model.gradient_checkpointing=true")
    half = plan_of(*base, "trainer.micro_batch_size=2")
    assert ckpt.terms["activations"] < plain.terms["activations"] / 5
    assert half.terms["activations"] == pytest.approx(plain.terms["activations"] / 2, rel=0.01)


def test_a_plan_that_does_not_fit_proposes_the_cheapest_change_and_that_change_fits():
    """Full fine-tuning of Llama-2-7B on 8 x 24 GB at ZeRO-0 does not fit; the proposal's overrides, applied,
    give a plan that fits, with the peak the proposal predicted."""
    base = ["recipe=full_llama7b_zero3", "zero=zero0", "plan.gpus=8", "plan.gpu_mem=24GB", "trainer.nproc=8"]
    plan = plan_of(*base)
    assert not plan.fits and plan.proposal
    assert any(o.startswith("zero.stage=") for o in plan.proposal["overrides"])
    fixed = plan_of(*base, *plan.proposal["overrides"])
    assert fixed.fits and fixed.peak == plan.proposal["peak_bytes"]


def test_lisa_gamma_is_a_candidate_and_nothing_fits_a_hopeless_budget():
    """Four LISA layers of Llama-2-7B do not fit 28 GiB; two do, which costs less than ZeRO-3 with offload."""
    plan = plan_of("recipe=lisa_llama7b", "peft.gamma=4", "plan.gpu_mem=28GiB")
    assert not plan.fits and plan.proposal["overrides"] == ["peft.gamma=2"]
    hopeless = plan_of("recipe=lisa_llama7b", "plan.gpu_mem=1GB")
    assert not hopeless.fits and hopeless.proposal is None and "no change" in hopeless.summary()


def test_plan_cli_json_and_table(capsys):
    from tuneforge.cli import main

    assert main(["plan", "--json", "recipe=lisa_llama7b", "plan.gpu_mem=80GB", "plan.gpus=8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peak_bytes"] == out["terms"]["peak"] and out["setting"]["world"] == 8
    assert main(["plan", "recipe=lora_tiny", "plan.gpu_mem=8GB"]) == 0
    text = capsys.readouterr().out
    assert "activations" in text and "logits + loss" in text and "fits" in text


def test_bad_plan_input_is_refused_with_every_problem():
    with pytest.raises(InputError) as e:
        Run.compose(["recipe=lora_tiny", "plan.gpu_mem=lots", "plan.gpus=-1"])
    text = e.value.render()
    assert "gpu_mem='lots' is not a size" in text and "gpus=-1" in text


def test_train_prints_the_plan_and_refuses_under_strict_when_it_does_not_fit(tmp_path, capsys):
    """Exit 2 before any model loads (no run directory is written)."""
    from tuneforge.cli import main

    out = tmp_path / "run"
    code = main(["train", "recipe=lora_tiny", "plan.gpu_mem=1MB", "plan.strict=true", f"trainer.output_dir={out}"])
    captured = capsys.readouterr()
    assert code == 2 and not out.exists()
    assert "plan.strict=true" in captured.err and "does NOT fit" in captured.err
    assert "plan: peak" in captured.out
