"""`tuneforge export` runs a list of registered stages (tuneforge/export/) on a finished run: a two-stage export
(merge -> prune) equals the default export (merge) with exactly the requested entries zeroed in exactly the
method's target matrices, per matrix or with one global threshold over all linears; re-tuning after pruning
(retune, the runner's loop in the export process) keeps every pruned zero and lowers the loss; a stage registered
outside tuneforge runs through the real export command with its knobs; unknown, misordered or badly configured
stages exit 2 naming the fix, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import ok, run_dir_of, tuneforge
from tuneforge import registry
from tuneforge.cli import main
from tuneforge.config.compose import _typed_export, build_specs, compose, export_stages, load_run_config
from tuneforge.config.spec import Spec, knob
from tuneforge.data.batching import collate
from tuneforge.data.encode import encode
from tuneforge.export.base import Stage
from tuneforge.models.load import load_tokenizer
from tuneforge.registry import register

TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-step LoRA run on q_proj and v_proj only (so prune's default targets are a strict subset)."""
    cwd = tmp_path_factory.mktemp("export")
    proc = ok(tuneforge("train", "recipe=lora_tiny", "peft.target_modules=[q_proj,v_proj]", "trainer.max_steps=1",
                        "trainer.save_every=0", "trainer.eval_at_start=false", cwd=cwd))
    return run_dir_of(proc)


def export(run, *overrides) -> dict[str, torch.Tensor]:
    """Run the real export command in this process; return the exported weights."""
    assert main(["export", f"run_dir={run}", *overrides]) == 0
    return load_file(str(run / "export" / "model.safetensors"))


def test_merge_then_prune_is_the_default_export_with_exactly_the_smallest_entries_zeroed(run, capsys):
    merged = export(run)
    assert (run / "export" / "adapter" / "adapter_config.json").is_file()
    pruned = export(run, "export=[merge,prune]", "export.prune.sparsity=0.3")
    assert "prune: unstructured, 30% of each of 4 matrices (q_proj, v_proj)" in capsys.readouterr().out
    assert pruned.keys() == merged.keys()
    targets = [k for k in merged if k.rsplit(".", 2)[-2] in TARGETS]
    assert len(targets) == 4  # 2 layers x (q_proj, v_proj)
    for k, want in merged.items():
        got = pruned[k]
        if k not in targets:
            assert torch.equal(got, want), k  # k_proj, o_proj, MLP, embeddings, norms: untouched
            continue
        zero = got == 0
        assert zero.sum().item() == round(0.3 * want.numel()), k
        assert torch.equal(got[~zero], want[~zero]), k  # survivors keep their merged value
        assert want[zero].abs().max() <= want[~zero].abs().min(), k  # the zeroed ones are the smallest


def test_global_prune_zeroes_the_smallest_entries_of_all_linears_together(run, capsys):
    """One magnitude threshold over every linear of the decoder layers (the DSEE reference's global_unstructured),
    computed here by sorting all their merged entries."""
    merged = export(run)
    pruned = export(run, "export=[merge,prune]", "export.prune.how=global", "export.prune.sparsity=0.3",
                     "export.prune.target_modules=[all-linear]")
    assert "prune: global, 30% of the 14 matrices together" in capsys.readouterr().out
    linear = [k for k in merged if ".layers." in k and k.endswith("_proj.weight")]
    every = torch.cat([merged[k].abs().flatten() for k in linear])
    k = round(0.3 * every.numel())
    threshold = every.sort().values[k - 1]  # the k-th smallest |w| over all of them
    assert sum(int((pruned[n] == 0).sum()) for n in linear) == k
    for name, want in merged.items():
        if name not in linear:
            assert torch.equal(pruned[name], want), name
            continue
        zero = pruned[name] == 0
        assert torch.equal(zero, want.abs() <= threshold), name
        assert torch.equal(pruned[name][~zero], want[~zero]), name
    per_matrix = [int((pruned[n] == 0).sum()) == round(0.3 * pruned[n].numel()) for n in linear]
    assert not all(per_matrix)  # each matrix keeps what it keeps: not 30% of each


def test_retune_keeps_the_pruned_zeros_and_lowers_the_loss(run, capsys):
    """Re-tuning after pruning trains the surviving entries of the pruned matrices only: every pruned zero is
    still zero, nothing else changes, and the training loss (Hugging Face's own, on the run's samples) falls."""
    from transformers import AutoModelForCausalLM

    prune = ["export.prune.how=global", "export.prune.sparsity=0.5"]
    pruned = export(run, "export=[merge,prune]", *prune)
    before = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    retuned = export(run, "export=[merge,prune,retune]", *prune, "export.retune.steps=4", "export.retune.lr=3e-3")
    assert "retune: 4 steps on 4 matrices (50.0% of their entries trainable" in capsys.readouterr().out
    after = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    assert (run / "export" / "retune" / "summary.json").is_file()
    for name, want in pruned.items():
        if name.rsplit(".", 2)[-2] not in TARGETS:
            assert torch.equal(retuned[name], want), name
            continue
        zero = want == 0
        assert torch.equal(retuned[name] == 0, zero), name
        assert (retuned[name][~zero] != want[~zero]).float().mean() > 0.5, name
    specs = build_specs(load_run_config(run))
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(specs["trainer"].seed)
    batch = collate(encode(loaded.train[:16], tok, specs["data"], loaded.report), tok.pad_token_id)
    with torch.no_grad():
        losses = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
                  for m in (before, after)]
    assert losses[1] < losses[0] - 0.05, losses


@dataclass
class CastSpec(Spec):
    dtype: str = knob("bfloat16", "torch dtype the exported weights are stored in")


class Cast(Stage):
    """The worked example of docs/extending.md (export stages): store the exported weights in another dtype."""

    def run(self, model, ctx):
        ctx.say(f"cast: weights to {self.spec.dtype}")
        return model.to(getattr(torch, self.spec.dtype))


@pytest.fixture
def cast_stage(monkeypatch):
    """Register the example stage for this test only (the registry is restored afterwards)."""
    registry.load_plugins()
    monkeypatch.setitem(registry._REGISTRY, "export", dict(registry._REGISTRY["export"]))
    register("export", "cast", config=CastSpec)(Cast)


def test_a_registered_stage_runs_through_tuneforge_export(run, cast_stage, capsys):
    merged = export(run)
    got = export(run, "export=[merge,cast]", "export.cast.dtype=float16")
    assert "cast: weights to float16" in capsys.readouterr().out
    assert got.keys() == merged.keys()
    for k, want in merged.items():
        assert got[k].dtype == torch.float16 and torch.equal(got[k], want.to(torch.float16)), k
    assert (run / "export" / "adapter").is_dir()  # merge's own output is unchanged by a later stage


@pytest.mark.parametrize("overrides,fix", [
    (["export=[merge,prunee]"], "unknown export stage 'prunee' (did you mean 'prune'?)"),
    (["export=[prune]"], "start with a stage that takes the trained model, e.g. export=[merge,prune]"),
    (["export=[merge,prune]", "export.prune.sparsity=1.5", "export.prune.hw=rows"],
     "export.prune.sparsity=1.5 must be in (0, 1)"),
    (["export.prune.sparsity=0.3"], "a stage's knobs need the stage: export=[...,prune]"),
    (["peft.r=8"], "the run's other settings are fixed"),
    (["export=[merge,prune,retune]", "export.retune.steps=0"], "export.retune.steps=0 must be > 0"),
])
def test_bad_stage_lists_exit_2_naming_the_fix(run, capsys, overrides, fix):
    assert main(["export", f"run_dir={run}", *overrides]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert fix in err, err
    if "export.prune.hw=rows" in overrides:
        assert "did you mean 'how'?" in err  # every problem at once


def test_train_and_show_reject_a_bad_stage_list_at_compose_time(capsys):
    assert main(["show", "recipe=lora_tiny", "export=[merge,prunee]"]) == 2
    assert "did you mean 'prune'?" in capsys.readouterr().err


def test_a_recipes_stages_and_knobs_compose_and_the_command_line_can_replace_them():
    stages = dict(export_stages(compose(["recipe=dsee_tiny"])))
    assert list(stages) == ["merge", "prune", "retune"]
    assert (stages["prune"].how, stages["prune"].sparsity, stages["retune"].steps) == ("global", 0.5, 2)
    stages = dict(export_stages(compose(["recipe=dsee_tiny", "export.prune.how=rows"])))
    assert (stages["prune"].how, stages["prune"].sparsity) == ("rows", 0.5)
    assert [n for n, _ in export_stages(compose(["recipe=dsee_tiny", "export=[merge]"]))] == ["merge"]


def test_knobs_of_a_stage_that_is_not_selected_are_an_error():
    """A recipe that sets export.prune.* without selecting prune in its defaults list (Hydra then adds a partial
    export.prune node): reported, not silently run as a last stage."""
    problems = []
    _typed_export(OmegaConf.create({"merge": {"adapter": True}, "prune": {"sparsity": 0.3}}), problems)
    assert problems == ["export.prune is set, but prune is not among the export stages: add it to the recipe's "
                        "`override /export: [...]` (or export=[...,prune] on the command line)"]
