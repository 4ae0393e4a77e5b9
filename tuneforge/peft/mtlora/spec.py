from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive

MODES = ("matrix", "routed")


@dataclass
class MtLoraSpec(Spec):
    name: str = knob("mtlora", "MTLoRA: a shared (task-agnostic) LoRA plus one task-specific LoRA per task")
    mode: str = knob("matrix", "matrix (the paper's default): shared adapters in the trunk, one pass serves every "
                               "task; in the last task_layers layers a sample's linears compute W0 x + B_t A_t x of "
                               "its task t (no shared adapter). routed: shared + task adapters in every target "
                               "linear, each sample routed to its task from the first layer (a task-specific trunk)")
    task_layers: int = knob(1, "matrix: how many last decoder layers carry the task-specific adapters (the paper: "
                               "the last block of each stage; a decoder LM is one stage); the layers before are the "
                               "shared trunk")
    tasks: list[str] = knob([], "task names, in id order: [] follows data.tasks; if set, must equal data.tasks")
    r: int = knob(8, "rank of the shared adapter")
    task_r: int = knob(8, "rank of each task-specific adapter")
    alpha: float = knob(16.0, "scaling numerator: the update is (alpha / r) B A + (alpha / task_r) B_t A_t")
    dropout: float = knob(0.0, "dropout on the adapter input")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear but the head)")

    caps = Caps(needs_tasks=True)

    def problems(self):
        out = positive(self, "r", "task_r", "alpha", "task_layers") + one_of(self, "mode", MODES)
        if not 0 <= self.dropout < 1:
            out.append(f"dropout={self.dropout} must be in [0, 1)")
        out += has_targets(self)
        if len(set(self.tasks)) != len(self.tasks):
            out.append(f"tasks={self.tasks} lists a task twice")
        return out

    def cross_problems(self, specs):
        data_tasks = specs["data"].tasks  # empty data.tasks is reported through caps.needs_tasks
        return tasks_differ(self.tasks, data_tasks) if data_tasks else []


def tasks_differ(peft_tasks: list, data_tasks: list) -> list[str]:
    if peft_tasks and list(peft_tasks) != list(data_tasks):
        return [f"peft.tasks={list(peft_tasks)} differs from data.tasks={list(data_tasks)}: one task module per data "
                "task, in the same order; drop peft.tasks (it follows data.tasks)"]
    return []
