"""`tuneforge merge` end to end: two tiny finished runs (addition, subtraction) merged through the real CLI with
the merge_add_sub_tiny recipe (TIES, lam searched on both tasks), and the same merge declared as a stage of a
training run (train -> merge)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_here
from tuneforge.cli import main

TINY = ["recipe=quickstart_tiny", "trainer.max_steps=1", "trainer.eval_at_start=false", "data.n_eval=4"]


def test_two_tiny_runs_merge_into_a_loadable_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    add = train_here(*TINY, out=tmp_path / "add")
    sub = train_here(*TINY, "data.ops=[-]", "merge=task_arithmetic", f"merge.inputs=[{add}]", out=tmp_path / "sub")
    staged = json.loads((sub / "merged" / "merge_report.json").read_text())  # train -> merge
    assert staged["coefficients"] == {"lam": 0.5} and [i["run"] for i in staged["inputs"]] == [str(sub), str(add)]

    out = tmp_path / "merged"  # a run's export (made by the stage above) and a run directory
    assert main(["merge", str(add / "export"), str(sub), "recipe=merge_add_sub_tiny", "merge.max_evals=2",
                 "data.n_eval=4", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "merge search: lam=0.5 ->" in printed and "merge search: lam=1.5 ->" in printed and "chose lam=" in printed
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "ties" and [p["coefficients"]["lam"] for p in report["search"]] == [0.5, 1.5]
    assert report["coefficients"]["lam"] in (0.5, 1.5)
    assert all({"exact_match", "eval_loss"} <= set(p["eval"]) and any(k.startswith("exact_match/") for k in p["eval"])
               for p in report["search"])
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain Hugging Face model
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    merged, a = load_file(str(out / "model.safetensors")), load_file(str(add / "export" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], a[name])
    assert (out / "tokenizer.json").is_file()

    other = tmp_path / "other_seed"  # a run of another base (its random init drew with another seed)
    other.mkdir()
    (other / "config.yaml").write_text((sub / "config.yaml").read_text().replace("seed: 42", "seed: 7"))
    assert main(["merge", str(add), str(other), "merge=ties", f"out={tmp_path / 'no'}"]) == 2
    err = capsys.readouterr().err
    assert "does not share the base: tuned from 'model=tiny_llama, random init with seed 7', but" in err, err
    assert not (tmp_path / "no").exists() and not (other / "export").exists()  # refused before any export


def test_merge_needs_a_method_and_two_inputs(tmp_path, capsys):
    assert main(["merge", str(tmp_path), "merge=ties", f"out={tmp_path / 'o'}"]) == 2
    assert main(["merge", str(tmp_path), str(tmp_path)]) == 2
    assert main(["merge", str(tmp_path), str(tmp_path), f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "neither a tuneforge run directory" in err and "two or more inputs, got 1" in err and "usage: tuneforge merge" in err and "choose a merge method" in err


def test_bad_merge_settings_are_refused_before_anything_loads(tmp_path, capsys):
    from tuneforge.config.compose import compose
    from tuneforge.errors import InputError

    with pytest.raises(InputError) as e:
        compose(["merge=pcb", "merge.ratio=0", "merge.lam_range=[1.3,0.8]", "merge.max_evals=0"])
    text = e.value.render()
    assert "merge.ratio=0.0 must be in (0, 1]" in text and "lam_range=[1.3, 0.8]" in text and "max_evals=0" in text
    assert main(["train", "recipe=quickstart_tiny", "merge=ties", f"trainer.output_dir={tmp_path / 'r'}"]) == 2
    assert "merges it after training with merge.inputs" in capsys.readouterr().err and not (tmp_path / "r").exists()
