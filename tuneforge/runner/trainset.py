"""The training samples a run uses: the encoded pool, the indices a selector chose from it, the sequences they
make (packed when data.packing=true) and the batch plan over those sequences.

A selector changes the choice with `use(indices)` -- before training (a static selection) or with the model
(a model-scoring selection, or a selector's `on_step_start` re-selecting through `ctx.data`). A choice made
with the model (`step` given) is saved in checkpoints (`state_dict`), so a resumed run trains on exactly what
the uninterrupted one did. A choice may weight samples' losses (Middo's `downweight`).
"""

from __future__ import annotations

from dataclasses import replace

from tuneforge.data.batching import BatchPlan
from tuneforge.data.encode import pack


class TrainSet:
    def __init__(self, pool: list, data_spec, trainer_spec, world: int):
        self.pool, self.data, self.t, self.world = pool, data_spec, trainer_spec, world
        self.reselected_at: int | None = None
        self.use(list(range(len(pool))))

    def use(self, chosen: list[int], step: int | None = None, weights: dict[int, float] | None = None) -> None:
        """Train on pool[chosen] from now on (`step`: the step at which the model chose them), with the loss of
        pool[i] scaled by weights[i] where given."""
        self.chosen, self.weights = list(chosen), dict(weights or {})
        picked = [replace(self.pool[i], weight=self.weights[i]) if i in self.weights else self.pool[i]
                  for i in self.chosen]
        self.samples = pack(picked, self.data.max_length) if self.data.packing else picked
        lengths = [len(s.input_ids) for s in self.samples] if self.data.bucket and not self.data.packing else None
        self.plan = BatchPlan(len(self.samples), self.t.micro_batch_size, self.t.grad_accum, self.world, self.t.seed,
                              lengths)
        if step is not None:
            self.reselected_at = step

    def state_dict(self) -> dict:
        if self.reselected_at is None:
            return {}
        out = {"chosen": self.chosen, "reselected_at": self.reselected_at}
        return out | ({"weights": {str(i): w for i, w in self.weights.items()}} if self.weights else {})

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.use(state["chosen"], state["reselected_at"], {int(i): w for i, w in state.get("weights", {}).items()})
