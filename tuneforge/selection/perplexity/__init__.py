"""`selection=perplexity`: keep the samples with the lowest (or highest) perplexity under the base model -- the
classic perplexity filter (fluent, clean text has low perplexity under a trained LM; noise, boilerplate and
off-task text high), scored once, before training.

ppl(x) = exp(mean over x's trained tokens of -log p(token | prefix)), computed with the model as built (the base
model with the tuning method attached, before any step) -- or, on a resume, with the choice saved in the run
(selection/selected.json and the checkpoints), never re-scored. Ties keep the lower index. The scores are written
to <run_dir>/selection/step_0.json.

It scores with `selection=loss`'s `sample_losses` (the sibling baseline; perplexity is the same score seen through
exp, so sharing it keeps both baselines ranking identically), but is its own option: it never re-selects and keeps
the low end by default, where `loss` keeps the hardest samples and may re-score during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuneforge.config.spec import Spec, knob, one_of, positive
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count, record
from tuneforge.selection.loss import sample_losses


@dataclass
class PerplexitySelectionSpec(Spec):
    name: str = knob("perplexity", "top-k samples by perplexity under the base model (scored once, before training)")
    fraction: float = knob(0.5, "share of the training samples kept (ignored when count > 0)")
    count: int = knob(0, "number of samples kept (0: use fraction)")
    keep: str = knob("low", "low: the most fluent samples (lowest perplexity, the usual filter); high: the least")
    batch_size: int = knob(8, "samples per scoring forward pass")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        out += positive(self, "count", allow_zero=True) + positive(self, "batch_size")
        return out + one_of(self, "keep", ("high", "low"))


@register("selection", "perplexity", config=PerplexitySelectionSpec)
class PerplexityTopK(Selector):
    needs_model = True

    def select(self, samples, ctx):
        s = self.spec
        ppl = [math.exp(x) for x in sample_losses(ctx.model, samples, s.batch_size, ctx.tokenizer.pad_token_id)]
        sign = -1 if s.keep == "high" else 1
        order = sorted(range(len(samples)), key=lambda i: (sign * ppl[i], i))
        chosen = sorted(order[:keep_count(s.fraction, s.count, len(samples))])
        record(ctx.run_dir, 0, chosen, ppl)
        return chosen
