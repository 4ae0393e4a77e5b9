"""Per-sample task routing: the task ids of the batch being computed, shared by every routed layer of a model.

A method with task-specific modules attaches one `TaskRoute` to the model (`attach`); the objective sets it from
the batch's `task_ids` before each forward (`set_tasks`), evaluation and export set it per task. The ids stay set
until the next forward, so a backward that recomputes activations (gradient checkpointing) sees the same routing.
Models without a route ignore task ids.
"""

from __future__ import annotations

import torch

from tuneforge.models.layers import unwrap


class TaskRoute:
    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.ids: torch.Tensor | None = None  # (batch,) task index per sample, or a 0-dim index for every sample

    def mask(self, task: int, x: torch.Tensor) -> torch.Tensor:
        """1 for the samples of `task`, 0 elsewhere, shaped to broadcast over x (batch, ..., features)."""
        if self.ids is None:
            raise RuntimeError("this model routes samples to task modules: the batch carries no task ids "
                               "(multi-task data needs data.task_field/data.tasks)")
        ids = self.ids.to(x.device)
        if ids.dim() == 0:
            return (ids == task).to(x.dtype)
        if ids.shape[0] != x.shape[0]:
            raise RuntimeError(f"{ids.shape[0]} task ids routed for a batch of {x.shape[0]} samples")
        return (ids == task).to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))


def attach(model, tasks: list[str]) -> TaskRoute:
    route = TaskRoute(tasks)
    unwrap(model).task_route = route
    return route


def route_of(model) -> TaskRoute | None:
    return getattr(unwrap(model), "task_route", None)


def set_tasks(model, ids) -> None:
    """Route the next forwards of `model`: ids per sample (a tensor or list), or one task index (int) for all."""
    route = route_of(model)
    if route is not None and ids is not None:
        route.ids = torch.as_tensor(ids, dtype=torch.long)
