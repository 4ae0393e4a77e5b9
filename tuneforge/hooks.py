"""In-training hooks: what the training loop calls, the same way, on every tuning method, data selector and
precision mode that acts while the model trains.

    on_train_start(ctx)   once, after the engine is built (and after a resume), before the first step
    on_step_start(ctx)    before each optimizer step (LISA switching layers, SwitchLoRA swapping vectors,
                          a selector re-selecting data)
    on_eval(ctx, row)     after each periodic eval (trainer.eval_every) with its metrics row (an optuna trial
                          reports it to its study, and may stop the run by raising errors.Pruned)

`ctx` is a TrainContext: the step about to run, the total, the engine (`runner.engine.Engine`: rebuild around a
new trainable set, per-parameter optimizer state, learning rate), the model and its tokenizer, `log(text)` for the console and
`metrics(row)` for the metrics sinks. A hook never imports or touches the runner. Outside a run (unit tests,
engine-less loops) a TrainContext with `engine=None` is valid: hooks then change weights only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _quiet(*_args, **_kwargs) -> None:
    return None


@dataclass
class TrainContext:
    step: int = 0  # the optimizer step about to run (0-based)
    total_steps: int = 1
    engine: Any = None  # tuneforge.runner.engine.Engine, or None outside a run
    model: Any = None  # the language model being trained (unwrapped from the engine)
    tokenizer: Any = None
    log: Callable[[str], None] = _quiet  # a line on the console (rank 0)
    metrics: Callable[[dict], None] = _quiet  # a row for metrics.jsonl / trackers (rank 0); include "step"
    run_dir: Any = None
    data: Any = None  # the runner's training data view: data.pool (all samples), data.chosen, data.use(indices)


class Hooks:
    """Base of everything the loop calls; every hook is optional."""

    def on_train_start(self, ctx: TrainContext) -> None:
        pass

    def on_step_start(self, ctx: TrainContext) -> None:
        pass

    def on_eval(self, ctx: TrainContext, row: dict) -> None:
        pass
