"""Pruning end to end on tiny_llama: a recipe that prunes before LoRA trains (its golden losses), `tuneforge prune`
prunes the finished run's merged model and a base model into Hugging Face directories that load with
transformers and have the stated sparsity and pattern, and bad input fails before any model loads, with the fix."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import summary, train_here, train_losses
from tests.golden import runs as golden
from tuneforge.cli import main
from tuneforge.config.compose import compose
from tuneforge.errors import InputError


def decoder_linears(model) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def test_prune_stage_trains_then_tuneforge_prune_writes_a_sparse_hf_model(tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = train_here(*golden.ARGS["wanda_lora_tiny"], out=tmp_path / "run")  # prune=wanda, then LoRA
    assert summary(run)["status"] == "completed"
    golden.check("wanda_lora_tiny", train_losses(run))
    (saved,) = (run / "prune").glob("*/pruned.safetensors")  # the pruned base: what eval/export rebuild from
    base = load_file(str(saved))
    assert len(base) == 14 and all(int((w == 0).sum(1).min()) == int((w == 0).sum(1).max()) == w.shape[1] // 2
                                   for w in base.values())  # Wanda: every output row exactly 50%
    assert "prune=wanda: 50.00%" in (run / "train.log").read_text()

    assert main(["prune", f"run_dir={run}", "trainer.max_steps=3"]) == 2  # the run is fixed
    assert "takes prune=<method> and prune.<knob>" in capsys.readouterr().err
    assert main(["prune", f"run_dir={run}", "prune=sparsegpt", "prune.pattern=2:4", "prune.seqlen=32",
                 "prune.n_samples=4"]) == 0
    out = run / "pruned"
    model = AutoModelForCausalLM.from_pretrained(out)
    linears = decoder_linears(model)
    assert len(linears) == 14
    for name, w in linears.items():  # 2:4: exactly 2 zeros in every 4 consecutive inputs of every row
        groups = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert groups.eq(2).all(), name
    stated = json.loads((out / "sparsity.json").read_text())
    assert stated["sparsity"] == 0.5 and stated["pattern"] == "2:4" and len(stated["layers"]) == 14
    assert all(r["error_after"] <= r["error_before"] for r in stated["layers"])  # SparseGPT's OBS updates help
    assert "50.0000% of the" in (out / "README.md").read_text()
    assert (out / "tokenizer.json").is_file()


def test_prune_a_base_model(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(["prune", "recipe=quickstart_tiny", "prune=magnitude", "prune.sparsity=0.25", "prune.seqlen=32",
                 "prune.n_samples=2", "trainer.threads=1", f"out={out}"]) == 0
    linears = decoder_linears(AutoModelForCausalLM.from_pretrained(out))
    assert all(int((w == 0).sum()) == round(0.25 * w.numel()) for w in linears.values())  # scope=per-layer
    assert json.loads((out / "sparsity.json").read_text())["sparsity"] == 0.25


@pytest.mark.parametrize("overrides,expect", [
    (["prune=wanda", "prune.sparsity=1.5", "prune.pattern=2-4"],
     ["prune.sparsity=1.5 must be in (0, 1)", "pattern='2-4' is neither unstructured nor N:M"]),
    (["prune=sparsegpt", "prune.pattern=2:4", "prune.sparsity=0.3", "prune.blocksize=6"],
     ["sparsity 0.5), but sparsity=0.3: set sparsity=0.5", "blocksize=6 must be a multiple of M=4"]),
    (["prune=dsnot", "prune.init=magnitude"], ["init='magnitude' is not one of wanda, sparsegpt"]),
    (["prune=wanda", "peft=qlora", "quant=nf4"], ["pruning needs the full-precision weights", "use quant=none"]),
    (["prune=wanda", "peft=full", "zero=zero3", "model=smollm2_135m"], ["under ZeRO-3", "use zero=zero2"]),
])
def test_bad_prune_settings_are_refused_with_the_fix(overrides, expect):
    with pytest.raises(InputError) as e:
        compose(["recipe=quickstart_tiny", *overrides])
    text = e.value.render()
    assert all(x in text for x in expect), text


def test_prune_needs_a_finished_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("recipe: quickstart_tiny\n")
    assert main(["prune", f"run_dir={tmp_path}", "prune=wanda"]) == 2
    assert "holds no finished run (no final/trainable.safetensors)" in capsys.readouterr().err
    assert main(["prune", "prune=wanda"]) == 2  # neither run_dir= nor out=
    assert "usage: tuneforge prune" in capsys.readouterr().err
