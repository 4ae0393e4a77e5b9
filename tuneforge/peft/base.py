"""The interface every tuning method implements; the runner calls nothing else.

    apply(model)          freeze / attach modules; return the model to train
    on_step_start(step, run)
                          optional: act during training (e.g. LISA switching layers); `run` is the Runner
    state_dict() / load_state_dict(state)
                          method state saved in checkpoints (e.g. LISA's active layers)
    merged(model)         a plain Hugging Face model for export (adapters merged into the weights)
    save_adapter(model, path) -> bool
                          write a PEFT adapter directory if the method has one
"""

from __future__ import annotations

from torch import nn


class TuningMethod:
    def __init__(self, spec):
        self.spec = spec

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def on_step_start(self, step: int, run) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def merged(self, model: nn.Module) -> nn.Module:
        return model

    def save_adapter(self, model: nn.Module, path) -> bool:
        return False


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for _, p in trainable(model)), total
