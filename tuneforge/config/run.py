"""One run, built once: the resolved config, its typed specs and the world size.

    Run.compose(overrides)  compose + validate on the launching process (every problem at once, exit 2)
    Run.load(run_dir)       the run a finished or launched run directory holds (ranks, eval, export read this)

Pre-flight checks, the run directory, the launcher, the Runner and the offline commands all take this object,
so specs are built once per process and nothing re-derives them. World size = nodes x ranks per node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig


@dataclass
class Run:
    cfg: DictConfig  # resolved; the only thing written to run_dir/config.yaml
    specs: dict  # group name -> spec dataclass
    hydra: Optional[DictConfig] = None  # {hydra: node} when the command line set hydra.* keys (--cfg hydra shows it)

    @classmethod
    def compose(cls, overrides: list[str]) -> Run:
        from tuneforge.config.compose import compose_run

        return cls(*compose_run(overrides))

    @classmethod
    def of(cls, cfg: DictConfig) -> Run:
        from tuneforge.config.compose import build_specs

        return cls(cfg, build_specs(cfg))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """The run of a run directory (wherever the directory now is: a copied run directory is itself)."""
        from tuneforge.config.compose import load_run_config

        run = cls.of(load_run_config(run_dir))
        run.set_run_dir(Path(run_dir).absolute())
        return run

    @property
    def recipe(self) -> str:
        return self.cfg.recipe

    @property
    def nodes(self) -> int:
        return self.specs["launcher"].nnodes

    @property
    def ranks_per_node(self) -> int:
        return self.specs["trainer"].nproc

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def run_dir(self) -> Path | None:
        out = self.specs["trainer"].output_dir
        return Path(out) if out else None

    def set_run_dir(self, path: Path) -> None:
        """Pin the run directory in the config and in the trainer spec (they must never disagree)."""
        self.cfg.trainer.output_dir = self.specs["trainer"].output_dir = str(path)
