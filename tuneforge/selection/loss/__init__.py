"""`selection=loss`: keep the samples with the highest (or lowest) loss under the model being trained -- the
simple baseline every learned selector must beat, and the worked example of a selector that needs the model.

score(x) = mean over x's trained tokens of -log p(token | prefix), computed with the model as it is when the
selector runs: after the model is built (the base model, or the resumed one), and again every
`selection.reselect_every` steps during training (0: once). Ties keep the lower index. Every re-selection is
written to <run_dir>/selection/step_<N>.json (chosen ids and every score).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive
from tuneforge.data.batching import collate
from tuneforge.distributed import dist
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count, record


@dataclass
class LossSelectionSpec(Spec):
    name: str = knob("loss", "top-k samples by the model's loss on them")
    fraction: float = knob(0.5, "share of the training samples kept (ignored when count > 0)")
    count: int = knob(0, "number of samples kept (0: use fraction)")
    keep: str = knob("high", "high: the hardest samples (highest loss); low: the easiest")
    reselect_every: int = knob(0, "re-score the pool and re-select every N steps during training (0: select once)")
    batch_size: int = knob(8, "samples per scoring forward pass")

    @property
    def caps(self) -> Caps:
        return Caps(reselects=f"every selection.reselect_every={self.reselect_every} steps" if self.reselect_every
                    else "", fix="select once (selection.reselect_every=0)")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        out += positive(self, "count", "reselect_every", allow_zero=True) + positive(self, "batch_size")
        return out + one_of(self, "keep", ("high", "low"))


@torch.no_grad()
def sample_losses(model, samples, batch_size: int, pad_id: int, params: dict | None = None) -> list[float]:
    """Mean token loss of each sample (every rank runs the same forwards: ZeRO-3 gathers are collective);
    `params`: weights to use in place of the model's own (torch.func.functional_call), e.g. a trained copy."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        batch = collate(samples[i:i + batch_size], pad_id)
        kw = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        logits = (functional_call(model, params, args=(), kwargs=kw) if params else model(**kw)).logits
        target = batch["labels"][:, 1:].to(device)
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none")
        out += (nll.sum(1) / (target != -100).sum(1).clamp(min=1)).tolist()
    model.train(was_training)
    return out


@register("selection", "loss", config=LossSelectionSpec)
class LossTopK(Selector):
    needs_model = True

    def select(self, samples, ctx):
        return self._choose(ctx.model, ctx.tokenizer, samples, ctx.run_dir, step=0)

    def _choose(self, model, tok, samples, run_dir, step: int) -> list[int]:
        s = self.spec
        scores = sample_losses(model, samples, s.batch_size, tok.pad_token_id)
        sign = -1 if s.keep == "high" else 1
        order = sorted(range(len(samples)), key=lambda i: (sign * scores[i], i))
        chosen = sorted(order[:keep_count(s.fraction, s.count, len(samples))])
        record(run_dir, step, chosen, scores)
        return chosen

    def on_step_start(self, ctx) -> None:
        every = self.spec.reselect_every
        if every and ctx.step > 0 and ctx.step % every == 0:
            chosen = dist.broadcast_object(self._choose(ctx.model, ctx.tokenizer, ctx.data.pool, ctx.run_dir, ctx.step))
            ctx.data.use(chosen, ctx.step)
            ctx.log(f"selection: step {ctx.step}: re-selected {len(chosen)} of {len(ctx.data.pool)} samples by loss")
