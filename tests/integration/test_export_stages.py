"""`tuneforge export` runs a list of registered stages (tuneforge/export/) on a finished run: a two-stage export
(merge -> prune) equals the default export (merge) with exactly the requested entries zeroed in exactly the
method's target matrices; a stage registered outside tuneforge runs through the real export command with its knobs;
unknown, misordered or badly configured stages exit 2 naming the fix, before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.conftest import ok, run_dir_of, tuneforge
from tuneforge import registry
from tuneforge.cli import main
from tuneforge.config.compose import _typed_export, compose, export_stages
from tuneforge.config.spec import Spec, knob
from tuneforge.export.base import Stage
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
    assert [(n, s.sparsity) for n, s in export_stages(compose(["recipe=dsee_tiny"]))[1:]] == [("prune", 0.5)]
    stages = dict(export_stages(compose(["recipe=dsee_tiny", "export.prune.how=rows"])))
    assert list(stages) == ["merge", "prune"] and (stages["prune"].how, stages["prune"].sparsity) == ("rows", 0.5)
    assert [n for n, _ in export_stages(compose(["recipe=dsee_tiny", "export=[merge]"]))] == ["merge"]


def test_knobs_of_a_stage_that_is_not_selected_are_an_error():
    """A recipe that sets export.prune.* without selecting prune in its defaults list (Hydra then adds a partial
    export.prune node): reported, not silently run as a last stage."""
    problems = []
    _typed_export(OmegaConf.create({"merge": {"adapter": True}, "prune": {"sparsity": 0.3}}), problems)
    assert problems == ["export.prune is set, but prune is not among the export stages: add it to the recipe's "
                        "`override /export: [...]` (or export=[...,prune] on the command line)"]
