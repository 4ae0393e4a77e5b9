"""`selection=skillit` config (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuneforge.config.spec import Spec, knob, positive


@dataclass
class SkillitSpec(Spec):
    name: str = knob("skillit", "Skill-it: online skill mixture following a skills graph (skills: data.tasks)")
    graph: Any = knob("identity", "skills graph A (A[i][j] > 0: training on skill i helps skill j): a k x k matrix in "
                                  "data.tasks order, identity (no transfer), or learn (short runs per skill)")
    eta: float = knob(0.1, "learning rate of the mixture update p ∝ p0 * exp(eta * A @ sum of windowed losses)")
    window: int = knob(3, "eval-loss evaluations summed in the update (the latest `window` updates)")
    update_steps: int = knob(100, "steps between mixture updates (each update evaluates every skill's loss)")
    prior: list[float] = knob([], "p0, one weight per skill (empty: uniform)")
    eval_per_skill: int = knob(16, "samples of each skill held out of training to measure its loss")
    learn_steps: int = knob(4, "graph=learn: steps trained on each skill from the current model")
    learn_lr: float = knob(1.0e-4, "graph=learn: AdamW learning rate of those steps")
    learn_batch: int = knob(8, "graph=learn: samples per step")
    batch_size: int = knob(8, "samples per loss-evaluation forward pass")

    def problems(self):
        out = positive(self, "window", "update_steps", "eval_per_skill", "learn_steps", "learn_lr", "learn_batch",
                       "batch_size") + positive(self, "eta", allow_zero=True)
        if isinstance(self.graph, str):
            if self.graph not in ("identity", "learn"):
                out.append(f"graph={self.graph!r}: give a k x k matrix, identity or learn")
        elif not (isinstance(self.graph, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in self.graph)
                  and all(isinstance(v, (int, float)) and math.isfinite(v) for r in self.graph for v in r)):
            out.append(f"graph={self.graph!r}: give a k x k matrix of numbers (e.g. [[1,0],[0.5,1]]), identity or learn")
        if any(not (v > 0 and math.isfinite(v)) for v in self.prior):
            out.append(f"prior={self.prior}: every weight must be > 0")
        return out

    def cross_problems(self, specs: dict) -> list[str]:
        tasks, out = specs["data"].tasks, []
        if not tasks:
            return ["selection=skillit needs skills: set data.task_field=<field> and data.tasks=[skill1,skill2,...] "
                    "(data=quickstart: data.ops=[+,-] data.tasks=[add,sub])"]
        k = len(tasks)
        if isinstance(self.graph, list) and (len(self.graph) != k or any(len(r) != k for r in self.graph)):
            out.append(f"selection.graph is not {k} x {k}: give one row and one column per skill of data.tasks={tasks}")
        if self.prior and len(self.prior) != k:
            out.append(f"selection.prior has {len(self.prior)} weights for {k} skills (data.tasks={tasks})")
        if specs["trainer"].max_steps <= 0:
            out.append("selection=skillit draws each round's batches itself, so the run's length is in steps: set "
                       "trainer.max_steps (trainer.epochs does not apply)")
        if self.graph == "learn" and specs["zero"].stage == 3:
            out.append("selection.graph=learn trains copies of the trainable weights, which ZeRO-3 partitions: use "
                       "zero=zero2 (or lower), or give the graph as a matrix")
        return out
