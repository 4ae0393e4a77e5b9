"""The interface every tuning method implements; the runner calls nothing else.

    check_model(spec, config) -> problems
                          problems visible from the model's config alone (found before any weights load): by
                          default the meta-device model's shape (models.shapes) is handed to
    shape_problems(spec, shape) -> problems
                          the method's model-shape constraints (rank vs widths, block divisibility, layer counts),
                          each naming the `peft.` key and a value that works; default: `target_modules`, if the
                          spec has them, must select at least one linear layer
    apply(model, ctx)     freeze / attach modules; return the model to train (ctx: MethodContext)
    param_groups(model)   optimizer parameter groups (default: one group of the trainable parameters)
    trained_names(model)  parameters whose values training may change: saved in final weights and checkpoints
    resume_buffers(model) buffers whose values training changes and that a resumed run needs (saved in checkpoints
                          only; e.g. SwitchLoRA's candidate pools); default none
    on_train_start(ctx) / on_step_start(ctx)
                          optional in-training hooks (`tuneforge.hooks`; e.g. LISA switching layers): ctx is a
                          TrainContext (step, total steps, engine, model, log, metrics); `ctx.engine.rebuild()`
                          re-creates the DeepSpeed engine for a new trainable set
    state_dict() / load_state_dict(state)
                          JSON-able method state saved in checkpoints (e.g. LISA's active layers)
    merged(model)         a plain Hugging Face model for export (adapters merged into the weights): what the
                          `merge` export stage (tuneforge/export/merge.py) hands to the later stages
    export(model, out) / load_export(base, out)
                          what `tuneforge export` writes, and how to load it back; default: the merged model as a
                          plain HF directory (`hf_export = True`). A method that cannot merge (LST) writes its own
                          format (the merge stage calls `export`), sets `hf_export = False` and loads it onto a
                          plainly loaded base model
    save_adapter(model, path) -> bool
                          write a PEFT adapter directory if the method has one
    variants()            optional: names of models exported side by side (export/<name>/, e.g. one per task);
                          merged(model, variant) / save_adapter(model, path, variant) then build each, and
                          use_variant(model, variant) makes the unmerged model compute as that variant (probes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tuneforge.hooks import Hooks
from tuneforge.models.shapes import ModelShape, describe, targets


@dataclass
class MethodContext:
    """What a method may use while it is applied: the run's seed and tokenizer, the tokenized training
    samples (empty when a finished run is rebuilt for eval/export), the run directory (caches), all specs, and
    `log(text)` for progress of long preparation (e.g. calibration; None: silent)."""

    seed: int = 0
    tokenizer: Any = None
    train_samples: list = field(default_factory=list)
    run_dir: Path | None = None
    specs: dict = field(default_factory=dict)
    log: Any = None


class TuningMethod(Hooks):
    hf_export = True  # `tuneforge export` writes a plain HF model (AutoModelForCausalLM.from_pretrained(out))

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def check_model(cls, spec, config) -> list[str]:
        shape = describe(config)
        return cls.shape_problems(spec, shape) if shape is not None else []

    @staticmethod
    def shape_problems(spec, shape: ModelShape) -> list[str]:
        return targets(shape, spec.target_modules)[1] if hasattr(spec, "target_modules") else []

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": [p for _, p in trainable(model)]}]

    def trained_names(self, model: nn.Module) -> set[str]:
        return {n for n, _ in trainable(model)}

    def resume_buffers(self, model: nn.Module) -> set[str]:
        return set()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def variants(self) -> list[str]:
        return []

    def use_variant(self, model: nn.Module, variant: str) -> None:
        pass

    def merged(self, model: nn.Module) -> nn.Module:
        return model

    def save_adapter(self, model: nn.Module, path) -> bool:
        return False

    def export(self, model: nn.Module, out: Path, **variant) -> None:
        import torch

        with torch.no_grad():
            self.merged(model, **variant).save_pretrained(str(out))

    @staticmethod
    def load_export(base: nn.Module, out: Path) -> nn.Module:
        """The exported model; `base` (the run's base model, loaded plainly) is used by methods that need it."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(out))


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for _, p in trainable(model)), total
