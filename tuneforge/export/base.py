"""The export stage interface and the loop that runs a run's stage list.

    Stage(spec)                  one registered stage, configured by its spec (`export.<name>.*` in the config)
    stage.run(model, ctx)        act on the model and return it (the next stage's input), or write files and
                                 return None (nothing left to save)
    Spec.takes (ClassVar)        "trained": the run's model as trained, the method attached (only the first
                                 stage, e.g. merge); "merged": a plain Hugging Face model (every later stage)

`run_stages` runs the list once per exported model (per variant, e.g. one per task) and saves what the last
stage returns as a Hugging Face directory (plus the tokenizer) in ctx.out.

A stage that trains (`retune`) does it through `ctx.train`, which `tuneforge export` (runner/offline.py) fills
with the runner's own loop: stages sit below the runner and never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge import registry
from tuneforge.errors import InputError
from tuneforge.models.targets import target_linears


@dataclass
class ExportContext:
    """What a stage may use: the run's method (its merge/adapter/export interface), all specs, the tokenizer,
    the directory this model is exported to, the variant being exported (None: the only one), `log(text)`, and
    `train(model, method, changes, out) -> summary`: train `model` in this process with the run's data,
    objective, precision and optimizer, `method` (a TuningMethod: param_groups, hooks) deciding what trains,
    the run's config changed by `changes` ({"optim.lr": 1e-4, ...}), logs and summary.json in `out`
    (None outside `tuneforge export`)."""

    method: Any
    specs: dict
    tokenizer: Any = None
    out: Path | None = None
    variant: str | None = None
    log: Callable[[str], None] | None = None
    train: Callable[..., dict] | None = None

    @property
    def variant_kw(self) -> dict:
        """Keyword arguments naming the variant for the method's merged/save_adapter/export."""
        return {} if self.variant is None else {"variant": self.variant}

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)


def targets(model: nn.Module, names, stage: str) -> list[tuple[str, nn.Linear]]:
    """The linears a stage acts on: `names` (its own `target_modules`; linear names inside the decoder layers or
    [all-linear])."""
    try:
        return target_linears(model, names)
    except ValueError as e:
        raise InputError([f"export.{stage}: {e}: set export.{stage}.target_modules"]) from None


def default_targets(spec, ctx: ExportContext) -> list[str]:
    """A stage's `target_modules`, or (null) the run's `peft.target_modules` if the method has them, else all-linear."""
    return spec.target_modules or getattr(ctx.specs.get("peft"), "target_modules", None) or ["all-linear"]


class Stage:
    def __init__(self, spec):
        self.spec = spec

    def run(self, model: nn.Module, ctx: ExportContext) -> nn.Module | None:
        raise NotImplementedError


@torch.no_grad()
def run_stages(model: nn.Module, stages: list[tuple[str, Any]], ctx: ExportContext) -> nn.Module | None:
    """Run (name, spec) stages in order; save the result to ctx.out when it is set. Returns the result."""
    for i, (name, spec) in enumerate(stages):
        if model is None:
            done = stages[i - 1][0]
            raise InputError([f"export stage {name} needs a model, but {done} wrote the export in its own format "
                              f"(peft={ctx.specs['peft'].name}): remove {name} from export=[...]"])
        model = registry.entry("export", name).builder(spec).run(model, ctx)
    if ctx.out is not None:
        ctx.out.mkdir(parents=True, exist_ok=True)
        if model is not None:
            model.save_pretrained(str(ctx.out))
        if ctx.tokenizer is not None:
            ctx.tokenizer.save_pretrained(str(ctx.out))
    return model
