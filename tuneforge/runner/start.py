"""From a composed run to a running job: preflight, the run directory, then in-process or launched ranks."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from tuneforge import registry
from tuneforge.config.checks import run_device
from tuneforge.config.run import Run
from tuneforge.distributed.ds_config import run_ds_config
from tuneforge.errors import InputError
from tuneforge.logging import secrets
from tuneforge.models.load import peek_config
from tuneforge.models.load import preflight as model_preflight
from tuneforge.plan.planner import make_plan
from tuneforge.precision.modes import resolve


def preflight(run: Run, log=None) -> None:
    """Input problems found without loading a model: data files and rows, local model paths, the tuning method
    against the model's architecture, raw DS JSON, lm-eval tasks (harness.tasks); the memory plan (its one-line
    summary to `log`; a plan that does not fit is a problem under plan.strict=true)."""
    specs = run.specs
    problems = model_preflight(specs["model"])
    config = peek_config(specs["model"]) if not problems else None
    if config is not None:
        problems += registry.entry("peft", specs["peft"].name).builder.check_model(specs["peft"], config)
        problems += registry.entry("quant", specs["quant"].name).builder.check_model(specs["quant"], config)
        problems += registry.entry("prune", specs["prune"].name).builder.check_model(specs["prune"], config)
        problems += check_plan(run, config, log)
    if run.cfg.deepspeed and not Path(run.cfg.deepspeed).is_file():
        problems.append(f"deepspeed={run.cfg.deepspeed}: file not found")
    try:
        registry.build("data", specs["data"]).load(specs["trainer"].seed)
    except InputError as e:
        problems += e.problems
    if specs["harness"].tasks:  # lm-eval after training: installed, task names known
        from tuneforge.runner import harness

        try:
            harness.check(specs["harness"])
        except InputError as e:
            problems += e.problems
    if problems:
        raise InputError(problems)


def check_plan(run: Run, config, log=None) -> list[str]:
    plan = make_plan(run.specs, config, run.world_size, run.ranks_per_node)
    if log is not None:
        log(plan.summary())
    if plan.fits or not run.specs["plan"].strict:
        return []
    fix = (f"set {' '.join(plan.proposal['overrides'])}" if plan.proposal else "use more ranks or a bigger device")
    return [f"plan.strict=true: {plan.summary()}; {fix}, or `tuneforge plan` for the breakdown"]


def default_run_dir(run: Run) -> Path:
    base = Path("outputs") / run.recipe / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}_{i}"), i + 1
    return path


def prepare_run_dir(run: Run, run_dir: Path | None = None) -> Path:
    """Create the run directory and write the resolved config.yaml and ds_config.json (what ranks read)."""
    t = run.specs["trainer"]
    run_dir = Path(run_dir or t.output_dir or default_run_dir(run)).absolute()
    if (run_dir / "config.yaml").is_file() and t.resume == "none" and (run_dir / "summary.json").is_file():
        raise InputError([f"{run_dir} already holds a run: choose another trainer.output_dir, "
                          "or continue it with trainer.resume=auto"])
    run_dir.mkdir(parents=True, exist_ok=True)
    run.set_run_dir(run_dir)
    if chosen := resolve(run.specs["precision"], run_device(run.specs)):  # precision=auto: decided once, here
        run.cfg.precision.compute, run.cfg.precision.chosen = run.specs["precision"].compute, chosen
    secrets.absorb(run.cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run.cfg))
    (run_dir / "ds_config.json").write_text(json.dumps(run_ds_config(run), indent=2))
    return run_dir


def start(run: Run, log: Path | None = None, in_process: bool = True) -> int:
    """Run in this process when there is one rank, the local launcher and no log capture; otherwise through the
    launcher."""
    if run.world_size == 1 and in_process and log is None and run.specs["launcher"].name == "local":
        from tuneforge.runner.runner import Runner

        return Runner(run).run()
    launcher = registry.build("launcher", run.specs["launcher"])
    if log is not None:
        os.environ["TUNEFORGE_OUTPUT_CAPTURED"] = "1"
    try:
        return launcher.launch(run, log)
    finally:
        os.environ.pop("TUNEFORGE_OUTPUT_CAPTURED", None)
