"""Hydra's conventions on the command line: hydra.* keys, user config directories, --cfg and --info, launcher
and sweeper choices. Composition only (no run): every check here is cheap."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tuneforge.cli import main
from tuneforge.config import hydra_node
from tuneforge.config.run import Run
from tuneforge.errors import InputError

TINY = ["recipe=quickstart_tiny"]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A team's config directory: a recipe inheriting a shipped one, and a LoRA option of its own."""
    d = tmp_path / "conf"
    (d / "peft").mkdir(parents=True)
    (d / "team_lora.yaml").write_text("# LoRA r=2 on q/v of the tiny model (our default)\n#\n"
                                      "#   tuneforge train --config-dir conf recipe=team_lora\n"
                                      "defaults:\n  - quickstart_tiny\n  - override /peft: my_lora\n  - _self_\n\n"
                                      "trainer:\n  max_steps: 3\n")
    (d / "peft" / "my_lora.yaml").write_text("name: lora\nr: 2\ntarget_modules: [q_proj, v_proj]\n")
    return d


def test_hydra_run_dir_and_job_name_set_the_run_directory(tmp_path):
    run = Run.compose([*TINY, f"hydra.run.dir={tmp_path}/run", "hydra.job.name=exp1"])
    assert run.cfg.trainer.output_dir == f"{tmp_path}/run" and run.run_dir == tmp_path / "run"
    assert run.hydra.hydra.job.name == "exp1"
    default = hydra_node.compose_node(hydra_node.HydraArgs(), "quickstart_tiny")[0]
    assert str(default.hydra.run.dir).startswith("outputs/quickstart_tiny/")  # tuneforge's default run dir


def test_hydra_keys_are_checked_with_did_you_mean(tmp_path):
    with pytest.raises(InputError) as e:
        Run.compose([*TINY, "hydra.run.dri=x", "hydra.verbose=true", "hydra.sweep.dir=y",
                     f"hydra.run.dir={tmp_path}/a", f"trainer.output_dir={tmp_path}/b", "hydra.searchpath=[file:///nope]"])
    text = e.value.render()
    assert "unsupported hydra key 'hydra.run.dri' (did you mean 'hydra.run.dir'?)" in text
    assert "unsupported hydra key 'hydra.verbose'" in text and "hydra.sweep.dir, hydra.sweep.subdir" in text
    assert "'hydra.sweep.dir=y' applies to sweeps" in text
    assert "name two run directories: give one" in text
    assert "config directory /nope (--config-dir / hydra.searchpath) does not exist" in text
    assert len(e.value.problems) == 5, text


def test_user_recipe_and_option_compose_with_the_shipped_groups(user_dir):
    for how in ([f"--config-dir={user_dir}"], [f"hydra.searchpath=[file://{user_dir}]"]):
        code, out, _ = cli("train", "--cfg", "job", "-p", "peft", *how, "recipe=team_lora")
        assert code == 0
        peft = OmegaConf.create(out)
        assert peft.name == "lora" and peft.r == 2 and list(peft.target_modules) == ["q_proj", "v_proj"]
    run = Run.compose([f"hydra.searchpath=[file://{user_dir}]", *TINY, "peft=my_lora", "peft.r=3"])
    assert run.specs["peft"].r == 3 and run.specs["model"].name == "tiny_llama"
    code, out, _ = cli("recipes", "-cd", str(user_dir))
    assert code == 0 and "team_lora" in out and "LoRA r=2 on q/v" in out
    code, out, _ = cli("show", "-cd", str(user_dir), "recipe=team_lora")
    assert code == 0 and "recipe: team_lora" in out


def test_user_options_are_validated_against_their_group(user_dir):
    (user_dir / "peft" / "typo.yaml").write_text("name: lora\nrr: 2\n")
    (user_dir / "peft" / "unknown.yaml").write_text("name: lorra\n")
    sp = f"hydra.searchpath=[file://{user_dir}]"
    for option, expect in (("typo", "unknown key peft.rr (did you mean 'r'?) for peft=lora"),
                           ("unknown", "no peft named 'lorra' (did you mean 'lora'?)"),
                           ("my_lorra", "unknown option peft=my_lorra (did you mean 'my_lora'?)")):
        with pytest.raises(InputError, match=expect.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            Run.compose([sp, *TINY, f"peft={option}"])


def test_user_files_may_not_shadow_shipped_ones(user_dir):
    (user_dir / "peft" / "lora.yaml").write_text("name: lora\n")
    (user_dir / "quickstart.yaml").write_text("defaults:\n  - base\n")
    with pytest.raises(InputError) as e:
        Run.compose([f"hydra.searchpath=[file://{user_dir}]", *TINY])
    text = e.value.render()
    assert "shadows the shipped option peft=lora" in text and "a shipped recipe has this name" in text
    (user_dir / "peft" / "lora.yaml").unlink()
    (user_dir / "quickstart.yaml").unlink()
    (user_dir / "with_hydra.yaml").write_text("defaults:\n  - quickstart_tiny\n  - _self_\nhydra:\n  run:\n    dir: x\n")
    with pytest.raises(InputError, match="sets `hydra:` keys, which a recipe cannot set"):
        Run.compose([f"hydra.searchpath=[file://{user_dir}]", "recipe=with_hydra"])


def test_cfg_prints_job_hydra_and_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("train", "--cfg", "job", *TINY, "peft=lora", "peft.r=4")
    job = OmegaConf.create(out)
    assert code == 0 and job.peft.r == 4 and job.recipe == "quickstart_tiny" and "hydra" not in job
    code, out, _ = cli("train", "--cfg", "hydra", "-m", *TINY, f"hydra.sweep.dir={tmp_path}/s", "optim.lr=1e-3,2e-3")
    node = OmegaConf.create(out)
    assert code == 0 and node.hydra.sweep.dir == f"{tmp_path}/s" and node.hydra.job.name == "quickstart_tiny"
    code, out, _ = cli("train", "--cfg", "all", "-m", *TINY, "optim.lr=1e-3,2e-3")
    assert code == 0 and out.count("# job ") == 2 and out.count("\nhydra:") == 2 and "lr: 0.002" in out
    assert not (tmp_path / "s").exists() and not Path("outputs/multirun").exists()  # --cfg runs nothing
    code, _, err = cli("train", "--cfg", "job", "-p", "pefft", *TINY)
    assert code == 2 and "did you mean 'peft'" in err


def test_info_lists_search_path_groups_and_defaults_tree(user_dir):
    code, out, _ = cli("train", "--info", "-cd", str(user_dir), "recipe=team_lora")
    assert code == 0
    assert f"user (--config-dir / hydra.searchpath)   file://{user_dir}" in out
    assert "my_lora*" in out and "team_lora*" in out and "submitit_local" in out
    tree = out.split("Defaults tree")[1]
    assert tree.index("team_lora:") < tree.index("quickstart_tiny:") < tree.index("base:") < tree.index("peft: my_lora")


def test_launcher_and_sweeper_choices_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, expect in ((["hydra/launcher=submitit_lokal"], "did you mean 'submitit_local'"),
                         (["hydra/launcher=submitit_slurm", "hydra.launcher.partiton=debug"],
                          "unknown knob hydra.launcher.partiton (did you mean 'partition'?)"),
                         (["hydra/sweeper=optna"], "unknown sweeper hydra/sweeper=optna (did you mean 'optuna'?)"),
                         (["hydra.sweeper.n_trials=3"], "the basic sweeper has no knobs"),
                         (["hydra.run.dir=x"], "a sweep's outputs go to hydra.sweep.dir"),
                         ([f"hydra.sweep.dir={tmp_path}/a", f"trainer.output_dir={tmp_path}/b"],
                          "name two sweep directories"),
                         (["hydra.sweep.subdir=same"], "gives several jobs one directory"),
                         (["hydra/sweeper=optuna", "hydra/launcher=submitit_local", "hydra.job.name=x"],
                          "hydra/sweeper=optuna runs its trials itself")):
        values = "optim.lr=1e-3,2e-3" if "subdir" in args[0] else "optim.lr=1e-3"  # one job is enough elsewhere
        code, _, err = cli("train", "-m", *TINY, "trainer.max_steps=1", values, *args)
        assert code == 2 and expect in err.replace("\n", " "), (args, err)
    assert not (tmp_path / "a").exists() and not Path("outputs").exists()


def test_submitit_slurm_launcher_is_hydras_plugin_with_our_knobs(tmp_path):
    """hydra/launcher=submitit_slurm composes the plugin's own schema; its knobs reach the real SlurmLauncher."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from tuneforge.runner.hydra_launch import SweepJob, _JobLoader

    args, problems = hydra_node.read(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
                                      "hydra.launcher.timeout_min=7", f"hydra.sweep.dir={tmp_path}"], multirun=True)
    master, loader = hydra_node.compose_node(args, "quickstart_tiny")
    assert not problems and master.hydra.launcher.partition == "debug"
    from hydra._internal.callbacks import Callbacks
    from hydra.types import HydraContext

    context = HydraContext(config_loader=_JobLoader(config_search_path=loader.get_search_path()),
                           callbacks=Callbacks(master))
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=SweepJob({}),
                                                       config=master)
    assert isinstance(launcher, SlurmLauncher)
    assert launcher.params["partition"] == "debug" and launcher.params["timeout_min"] == 7
    assert launcher.params["name"] == "quickstart_tiny" and launcher.params["submitit_folder"].startswith(str(tmp_path))
    job = context.config_loader.load_sweep_config(master, ["optim.lr=0.001"])
    job.hydra.job.num = 3
    assert hydra_node.job_dir(master, ["optim.lr=0.001"], 3) == tmp_path / "3_0.001"
    assert str(job.hydra.sweep.subdir) == "3_0.001"


def test_sweep_subdir_patterns(tmp_path):
    args, _ = hydra_node.read([f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}-${hydra.job.name}"],
                              multirun=True)
    master = hydra_node.compose_node(args, "exp")[0]
    assert hydra_node.job_dir(master, ["optim.lr=1e-3"], 1) == tmp_path / "1-exp"
    args, _ = hydra_node.read([f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.override_dirname}"],
                              multirun=True)
    master = hydra_node.compose_node(args, "exp")[0]
    assert hydra_node.job_dir(master, ["optim.lr=1e-3", "peft=lora"], 0) == tmp_path / "optim.lr=1e-3,peft=lora"
