"""The Engine owns the DeepSpeed engine of a run.

    build(groups)          deepspeed.initialize over the method's parameter groups, the optimizer the precision
                           mode chooses (per-element Adam steps when the method's caps ask: element_steps), and
                           the LR schedule continued from the current step
    rebuild(change)        release the engine (optimizer state, partitions), run change() -- which alters what
                           is trainable and returns the new parameter groups -- and build again
    release()              destroy the engine, leaving the model an ordinary module
                           (what existed before the engine was built is frozen out of the garbage collector while
                           it lives -- gc.freeze --, so the collection that frees the old optimizer scans only
                           what came after: a LISA switch on the tiny model rebuilt in 0.10 s instead of 1.8 s, 95% of
                           which was that collection)
    state(p) / put_state(p, s) / materialize() / held_numel() / held_bytes()
                           a parameter's optimizer state (fp32 master, Adam moments, step), any ZeRO stage
    snapshot() / restore(s)
                           everything an optimizer step changes, copied and put back exactly (ZeRO 0-2): a
                           step taken to measure its effect (a data selector's probe) leaves no trace
    lr, reset_schedule(total)
                           the learning rate of the next step; rebuild the schedule for a new total step count
    forward / backward / micro_step / step_applied / advance_schedule
                           one micro-batch and the optimizer step; a step with a non-finite gradient is skipped
                           (parameters unchanged) and the schedule still advances with the step count

Methods reach it through the TrainContext (`ctx.engine`), never through the runner.
"""

from __future__ import annotations

import gc
import types
import weakref

import torch

from tuneforge import registry
from tuneforge.distributed import dist
from tuneforge.distributed import optim_state as ostate
from tuneforge.distributed.ds_config import element_steps


def skip_nonfinite_steps(opt) -> None:
    """ZeRO-0 with fp32 weights hands gradients straight to the torch optimizer, which would apply NaN/Inf: make
    its step a no-op, flagged as an overflow so DeepSpeed counts it skipped, when any rank's gradient is not
    finite. The other engines (ZeRO 1-3, bf16/fp16) already skip on a non-finite gradient norm."""
    step = opt.step

    def guarded(self, *args, **kwargs):
        bad = any(not bool(torch.isfinite(p.grad).all()) for g in self.param_groups for p in g["params"]
                  if p.grad is not None)
        self.overflow = bool(dist.all_sum([bad])[0])
        return None if self.overflow else step(*args, **kwargs)

    opt.step = types.MethodType(guarded, opt)  # a bound method, as LR schedulers expect


class Engine:
    def __init__(self, objective: torch.nn.Module, ds: dict, specs: dict, precision, device: str, total_steps: int):
        self.objective, self.ds_config, self.specs = objective, ds, specs
        self.precision, self.device, self.total_steps = precision, device, total_steps
        self.ds = self.optimizer = self.scheduler = None

    # ------------------------------------------------------------------ build
    def build(self, groups: list[dict], start_step: int = 0) -> None:
        """A DeepSpeed engine over `groups`; the LR schedule continues from `start_step`."""
        import deepspeed

        gc.freeze()  # what exists now outlives the engine: release()'s collection need not scan it
        optim = registry.build("optim", self.specs["optim"], element_steps=element_steps(self.specs))
        client_opt = self.precision.optimizer(groups, optim)
        plain = self.ds_config["zero_optimization"]["stage"] == 0 and not ({"bf16", "fp16"} & set(self.ds_config))

        def schedule(opt):  # DeepSpeed calls this with the optimizer it built
            if plain:
                skip_nonfinite_steps(opt)
            return self._schedule(opt, start_step)

        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.objective, model_parameters=groups, optimizer=client_opt, config=self.ds_config,
            lr_scheduler=schedule)
        if self.device == "cpu":
            self.ds.to("cpu")

    def _schedule(self, opt, start_step: int):
        return registry.build("sched", self.specs["sched"], self.total_steps).build(opt, start_step=start_step)

    @property
    def steps_done(self) -> int:
        """Optimizer steps taken (applied or skipped): the schedule's own counter."""
        return self.scheduler.last_epoch

    def rebuild(self, change) -> None:
        """Re-create the engine around `change()` (which alters what is trainable and returns the new parameter
        groups): the old optimizer and its partitions are released first, so state exists only for what the new
        engine trains."""
        start = self.steps_done
        self.release()
        self.build(change(), start_step=start)

    def release(self) -> None:
        """Destroy the DeepSpeed engine (optimizer state, partitions, the hooks it put on the model), leaving the
        model an ordinary module."""
        old = self.ds
        old.destroy()
        for hook in (old.module_forward_pre_hook, old.module_forward_post_hook):  # destroy() leaves these
            if hook is not None:
                hook.remove()
        for p in self.objective.parameters():  # links DeepSpeed leaves on parameters: the old optimizer, fp32 views
            for attr in ("_z3_optimizer", "_zero_optimizer", "_hp_mapping"):
                if attr in p.__dict__:
                    setattr(p, attr, None)
        released = weakref.ref(old.optimizer)
        self.ds = self.optimizer = self.scheduler = old = None
        gc.collect()  # the engine's reference cycles; objects frozen by build() are not scanned
        gc.unfreeze()  # the runner's teardown unfreezes too, when the run ends with the engine built
        if released() is not None:  # frozen with it: another engine was built while this one lived
            gc.collect()
        if released() is not None:
            raise RuntimeError("the previous DeepSpeed optimizer is still referenced after an engine release")

    def reset_schedule(self, total_steps: int) -> None:
        """A new total step count (an extended run): the schedule is rebuilt for it, from the current step."""
        start = self.steps_done
        self.total_steps = total_steps
        self.scheduler = self.ds.lr_scheduler = self._schedule(self.ds.optimizer, start)

    # ------------------------------------------------------------------ optimizer state
    def state(self, p: torch.nn.Parameter) -> dict | None:
        return ostate.get(self.ds, p)

    def put_state(self, p: torch.nn.Parameter, state: dict) -> None:
        ostate.put(self.ds, p, state)

    def snapshot(self) -> dict:
        return ostate.snapshot(self.ds)

    def restore(self, snap: dict) -> None:
        ostate.restore(self.ds, snap)

    def materialize(self) -> None:
        ostate.materialize(self.ds)

    def held_numel(self) -> int:
        """Optimizer-state elements held by this rank."""
        return ostate.held_numel(self.ds)

    def held_bytes(self) -> int:
        """Optimizer-state bytes held by this rank (summary.json's optimizer_state_bytes)."""
        return ostate.held_bytes(self.ds)

    # ------------------------------------------------------------------ training
    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0])  # torchao optimizers keep lr as a tensor

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def forward(self, batch: dict, **kwargs) -> torch.Tensor:
        return self.ds(**batch, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def micro_step(self) -> None:
        """DeepSpeed's step: accumulates, and steps the optimizer at the last micro-batch of a global batch."""
        self.ds.step()

    def step_applied(self) -> bool:
        return self.ds.was_step_applied()

    def advance_schedule(self) -> None:
        """After a skipped step: DeepSpeed holds the schedule there; keep it on the step count."""
        self.ds.lr_scheduler.step()
