"""Composition and validation: every option and recipe composes; bad input is reported all at once."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from tuneforge import registry
from tuneforge.cli import main
from tuneforge.config.compose import GROUPS, build_specs, compose, options, recipes
from tuneforge.errors import InputError

# Options that need a value the preset cannot know (a path on this machine).
NEEDS = {
    ("zero", "zero3_nvme"): ["zero.nvme_path=/tmp"],
    ("precision", "fp16"): ["trainer.device=cuda"],
    ("precision", "fp8"): ["precision.emulate=true"],  # on a CPU: the emulation (FP8 kernels need CUDA cc >= 8.9)
    ("optim", "paged_adamw8bit"): ["trainer.device=cuda"],  # CUDA unified memory
    ("optim", "paged_adamw32bit"): ["trainer.device=cuda"],
    ("peft", "mtlora"): ["data.ops=[+,-]", "data.tasks=[add,sub]"],  # multi-task data
    ("peft", "qlora"): ["quant=nf4"],  # QLoRA = LoRA on a 4-bit base (a cross-axis check)
    ("quant", "nf4"): ["peft=qlora"],
    ("peft", "e2e_qp"): ["quant=efficientqat"],  # E2E-QP trains the step sizes of an EfficientQAT base
    ("quant", "efficientqat"): ["peft=e2e_qp"],
    ("quant", "int8"): ["peft=qlora"],
    ("selection", "preselect"): ["selection.models=[tiny_llama@1,tiny_llama@2,tiny_llama@3]", "selection.ranking=[1,2,3]"],
    ("selection", "paser"): ["prune=magnitude", "selection.original=smollm2_135m"],  # recovers a pruned model
    ("selection", "skillit"): ["data.ops=[+,-]", "data.tasks=[add,sub]", "trainer.max_steps=10"],
    **{("data", n): [f"data.path=pkg://tuneforge/data/examples/{n}.{'txt' if n == 'text' else 'jsonl'}"]
       for n in ("jsonl", "alpaca", "sharegpt", "chat", "qa", "text")},
}


def walk():
    for group in GROUPS:
        for name in options(group):
            yield group, name


@pytest.mark.parametrize("group,name", list(walk()))
def test_every_group_option_composes(group, name):
    cfg = compose([f"{group}={name}", *NEEDS.get((group, name), [])])
    spec = build_specs(cfg)[group]
    assert getattr(spec, "name", name) == name  # one name everywhere: file name == cfg.<group>.name


@pytest.mark.parametrize("recipe", sorted(recipes()))
def test_every_recipe_composes_and_shows(recipe):
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["show", f"recipe={recipe}"])
    assert code == 0
    text = out.getvalue()
    assert f"recipe: {recipe}" in text and "train_micro_batch_size_per_gpu" in text
    assert recipes()[recipe], f"recipe {recipe} has no header comment"


def test_recipes_are_short_diffs_with_header():
    from tuneforge.config.compose import config_dirs

    for path in config_dirs()[1].glob("*.yaml"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 30, f"{path.name}: {len(lines)} lines (recipes are short diffs)"
        assert lines[0].startswith("# ") and any("tuneforge train" in ln for ln in lines[:6]), path.name


def test_registry_and_configs_agree():
    """Every registered builder has a config file and every config file of a registered group has a builder."""
    for group in registry.groups():
        assert set(registry.names(group)) == set(options(group)), group


def test_typos_types_ranges_unknown_options_reported_together():
    with pytest.raises(InputError) as e:
        compose(["trainer.max_stepz=5", "peft=lora", "peft.rr=3", "optim.lr=abc", "trainer.micro_batch_size=-1",
                 "zero=zero33"])
    text = e.value.render()
    assert len(e.value.problems) == 5, text
    assert "did you mean 'max_steps'" in text and "did you mean 'r'" in text
    assert "optim.lr='abc'" in text and "Float" in text
    assert "trainer.micro_batch_size=-1 must be > 0" in text
    assert "unknown option zero=zero33 (did you mean 'zero3'?)" in text


def test_unknown_recipe_and_group_suggest():
    with pytest.raises(InputError, match="did you mean 'quickstart'"):
        compose(["recipe=quikstart"])
    with pytest.raises(InputError, match="did you mean 'trainer'"):
        compose(["trainr.max_steps=3"])


def test_cross_axis_checks_listed_together():
    with pytest.raises(InputError) as e:
        compose(["precision=fp16", "zero=zero2_offload", "optim=adamw8bit", "trainer.device=cpu"])
    text = e.value.render()
    assert "needs a CUDA device" in text and "adamw8bit cannot run with ZeRO optimizer offload" in text


def test_dict_fields_accept_new_keys_and_overrides_apply():
    cfg = compose(["model=tiny_llama", "model.arch.num_hidden_layers=3", "peft=lora", "peft.r=4",
                   "peft.target_modules=[q_proj,v_proj]"])
    specs = build_specs(cfg)
    assert specs["model"].arch["num_hidden_layers"] == 3
    assert specs["peft"].r == 4 and specs["peft"].target_modules == ["q_proj", "v_proj"]


def test_sweep_override_outside_multirun_is_an_error():
    with pytest.raises(InputError, match="tuneforge train -m"):
        compose(["optim.lr=1e-4,2e-4"])


def test_show_doc_explains_keys():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["show", "--doc", "peft=lora"]) == 0
    assert "peft.r" in out.getvalue() and "adapter rank" in out.getvalue()
