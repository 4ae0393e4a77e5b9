"""`retune`: train a pruned model again with its zeros fixed -- DSEE's step 2, "pruning & fine-tuning" (Chen et al.,
ACL 2023, arXiv 2111.00160, Sec. 3.2; the reference's run_glue_prune_with_WAB.py), usable after any `prune`.

The zero pattern of every target matrix when the stage starts is a fixed mask M (1 where w != 0). Only the
target matrices train, as W <- W - lr * update(M * grad): the gradient is masked (a hook on each weight), so
Adam's moments and weight decay never move a pruned entry, and the weights are masked again before every step
and at the end, so the export keeps exactly the pruned zeros. The training is the run's own: `ctx.train`
(runner/offline.py) runs the runner's loop in this process on the run's data, objective, precision, optimizer and
schedule, with `steps` and `lr` from this stage; it evaluates before and after (`<export>/retune/summary.json`).
Everything else in the model comes back bitwise as it was (a bf16 engine casts the whole module: the frozen
tensors are put back); the re-tuned matrices come back in the export's dtype with the values the engine trained
(bf16-rounded under precision=bf16), which are the values its final eval saw.

Departure from the reference: it re-tunes the adapters (U V and S2) over the masked, frozen W0 and keeps them
unmerged, so its final weights W0 * M + U V + S2 are sparse only as long as the adapters stay apart. tuneforge
exports one merged Hugging Face model, so it re-tunes the surviving entries of the merged weights themselves
(sparse fine-tuning), which keeps the export exactly as sparse as `prune` made it. This trains (and keeps Adam
states for) every target matrix: narrow `target_modules` to bound the memory on large models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from tuneforge.config.spec import Spec, knob, positive
from tuneforge.errors import InputError
from tuneforge.export.base import Stage, default_targets, targets
from tuneforge.peft.base import TuningMethod
from tuneforge.registry import register


@dataclass
class RetuneSpec(Spec):
    takes: ClassVar[str] = "merged"
    steps: Optional[int] = knob(None, "optimizer steps of re-tuning; null: as many as the run trained")
    lr: Optional[float] = knob(2e-5, "peak learning rate (the run's schedule shape): a full fine-tuning rate, since "
                                     "weights train, not adapters; null: the run's optim.lr")
    target_modules: Optional[list[str]] = knob(None, "matrices re-tuned with their zeros fixed (the rest stays "
                                                     "frozen): linear names inside the decoder layers or "
                                                     "[all-linear]; null: the run's peft.target_modules if the "
                                                     "method has them, else all-linear")

    def problems(self):
        out = positive(self, *(n for n in ("steps", "lr") if getattr(self, n) is not None))
        if self.target_modules is not None and not self.target_modules:
            out.append("target_modules is empty: list module names, [all-linear], or null (the method's targets)")
        return out


class FixedMask(TuningMethod):
    """Trains `weights` only, each on its nonzero entries: the gradient is masked by a hook and the weights are
    re-masked before every step (`on_step_start`) and by `release()`, which also freezes them again."""

    def __init__(self, model: torch.nn.Module, weights: list[torch.nn.Parameter]):
        super().__init__(None)
        for p in model.parameters():
            p.requires_grad_(False)
        self.weights = weights
        self.masks = [w.detach() != 0 for w in weights]
        self.hooks = []
        for w, m in zip(weights, self.masks):
            w.requires_grad_(True)
            self.hooks.append(w.register_hook(lambda g, m=m: g * m.to(g.dtype)))

    @torch.no_grad()
    def reapply(self) -> None:
        for w, m in zip(self.weights, self.masks):
            w.mul_(m.to(w.dtype))

    def on_step_start(self, ctx) -> None:
        self.reapply()

    def release(self) -> None:
        for h in self.hooks:
            h.remove()
        for w in self.weights:
            w.requires_grad_(False)
        self.reapply()


@register("export", "retune", config=RetuneSpec)
class Retune(Stage):
    def run(self, model, ctx):
        s = self.spec
        if ctx.train is None or ctx.out is None:
            raise InputError(["export stage retune trains the model: run it with `tuneforge export run_dir=DIR "
                              "export=[merge,prune,retune]` (it needs the runner)"])
        found = targets(model, default_targets(s, ctx), "retune")
        mask = FixedMask(model, [m.weight for _, m in found])
        kept = untouched(model, mask.weights)
        changes = {k: v for k, v in (("trainer.max_steps", s.steps), ("optim.lr", s.lr)) if v is not None}
        model.train()
        try:
            summary = ctx.train(model, mask, changes, ctx.out / "retune")
        finally:
            mask.release()
            kept()
            model.eval()
        before, after = summary.get("eval_before") or {}, summary.get("eval") or {}
        share = sum(int(m.sum()) for m in mask.masks) / max(sum(m.numel() for m in mask.masks), 1)
        loss = (f"; eval loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}"
                if "eval_loss" in before and "eval_loss" in after else "")
        ctx.say(f"retune: {summary.get('steps')} steps on {len(found)} matrices ({share:.1%} of their entries "
                f"trainable, zeros fixed){loss}")
        return model


def untouched(model: torch.nn.Module, trained: list[torch.nn.Parameter]):
    """A function that puts back every tensor of `model` but `trained` as it is now, and `trained` in its current
    dtype: a bf16 engine casts the whole module (replacing each tensor's data), which would round the frozen
    weights and buffers of a float32 export."""
    ids = {id(w) for w in trained}
    params = [(p, p.data) for p in model.parameters() if id(p) not in ids]
    dtypes = [(w, w.dtype) for w in trained]
    buffers = [(m, n, b) for m in model.modules() for n, b in m._buffers.items() if b is not None]

    def restore() -> None:
        for p, data in params:
            p.data = data
        for w, dtype in dtypes:
            w.data = w.data.to(dtype)
        for m, n, b in buffers:
            m._buffers[n] = b

    return restore
