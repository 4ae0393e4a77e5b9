"""From a validated config to a running job: preflight, the run directory, then in-process or launched ranks."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tuneforge import registry
from tuneforge.config.compose import build_specs
from tuneforge.distributed.ds_config import ds_config, with_override
from tuneforge.errors import InputError
from tuneforge.logging import secrets
from tuneforge.models.load import peek_config
from tuneforge.models.load import preflight as model_preflight


def preflight(cfg: DictConfig) -> None:
    """Input problems found without loading a model: data files and rows, local model paths, raw DS JSON."""
    specs = build_specs(cfg)
    problems = model_preflight(specs["model"])
    config = peek_config(specs["model"]) if not problems else None
    if config is not None:
        problems += registry.entry("peft", specs["peft"].name).builder.check_model(specs["peft"], config)
    if cfg.deepspeed and not Path(cfg.deepspeed).is_file():
        problems.append(f"deepspeed={cfg.deepspeed}: file not found")
    try:
        registry.build("data", specs["data"]).load(specs["trainer"].seed)
    except InputError as e:
        problems += e.problems
    if problems:
        raise InputError(problems)


def default_run_dir(cfg: DictConfig) -> Path:
    base = Path("outputs") / cfg.recipe / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}_{i}"), i + 1
    return path


def prepare_run_dir(cfg: DictConfig, run_dir: Path | None = None) -> Path:
    """Create the run directory and write the resolved config.yaml and ds_config.json (what ranks read)."""
    t = cfg.trainer
    run_dir = Path(run_dir or t.output_dir or default_run_dir(cfg)).absolute()
    if (run_dir / "config.yaml").is_file() and t.resume == "none" and (run_dir / "summary.json").is_file():
        raise InputError([f"{run_dir} already holds a run: choose another trainer.output_dir, "
                          "or continue it with trainer.resume=auto"])
    run_dir.mkdir(parents=True, exist_ok=True)
    t.output_dir = str(run_dir)
    secrets.absorb(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "ds_config.json").write_text(json.dumps(run_ds_config(cfg), indent=2))
    return run_dir


def run_ds_config(cfg: DictConfig) -> dict:
    """The DeepSpeed config a run uses: generated, the user's raw JSON merged over, secret-named keys masked."""
    return secrets.redact_json(with_override(ds_config(build_specs(cfg), cfg.trainer.nproc), cfg.deepspeed))


def start(cfg: DictConfig, run_dir: Path, log: Path | None = None, in_process: bool = True) -> int:
    """Run in this process when there is one rank and no log capture; otherwise through the launcher."""
    nproc = cfg.trainer.nproc
    if nproc == 1 and in_process and log is None:
        from tuneforge.runner.runner import Runner

        return Runner(cfg, run_dir).run()
    launcher = registry.build("launcher", build_specs(cfg)["launcher"])
    if log is not None:
        os.environ["TUNEFORGE_OUTPUT_CAPTURED"] = "1"
    try:
        return launcher.launch(run_dir, nproc, log)
    finally:
        os.environ.pop("TUNEFORGE_OUTPUT_CAPTURED", None)
