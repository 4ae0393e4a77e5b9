"""`peft=triadaptlora`: TriAdaptLoRA (Liang, Wang & Zeng, 2025, arXiv 2501.08008). HF PEFT does not implement it;
this is tuneforge's own code.

LoRA, h = W0 x + s B A x, whose rank grows per module during training:
- importance of module l (the paper's normalized Frobenius-norm metric): I_l = ||s B_l A_l||_F / sqrt(out_l in_l),
  the RMS of its update, computed from r x r Gram matrices; scores are normalized across modules,
  S_l = I_l / max_k I_k in [0, 1];
- adaptive rank growth with a dynamic threshold: at every decision step t (every grow_every steps from grow_start
  to grow_until x total steps) every module with S_l >= tau(t) and rank < r_max grows by one; tau(t) falls from
  1 to tau_end over the growth phase (linear -- the variant the paper finds best --, exponential or cosine), so
  the most important modules grow first and the others follow as the threshold drops.
Rank bookkeeping (tuneforge's design): A and B are allocated at r_max with a rank mask M per module; growing
unmasks the next row of A / column of B. Masked rows get no gradient (their Adam moments stay zero, their B columns exactly zero); at growth
the new row's B column is zero (the layer's function is unchanged) and its Adam moments are zeroed explicitly
(tuneforge.distributed.optim_state, ZeRO 0-2). Ranks are printed at each growth and saved in the method state
(restored on resume). The scale s = alpha / r_init is fixed, so growth never rescales what was learnt.

Not reproduced: the paper's triangular split of the transformation matrices into lower/upper triangular parts
(the full text was not available offline when this was written); see docs/peft_custom.md.
"""

from __future__ import annotations

import math

import torch

from tuneforge.peft.adapters import merge, row_index, wrap, write
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.triadaptlora.layer import TriAdaptLinear
from tuneforge.peft.triadaptlora.spec import TriAdaptLoraSpec
from tuneforge.registry import register


def threshold(progress: float, schedule: str, tau_end: float) -> float:
    """tau at progress p in [0, 1] of the growth phase: 1 at p=0, tau_end at p=1."""
    p = min(max(progress, 0.0), 1.0)
    fall = {"linear": p, "cosine": (1 - math.cos(math.pi * p)) / 2,
            "exponential": (1 - math.exp(-5 * p)) / (1 - math.exp(-5))}[schedule]
    return 1 - fall * (1 - tau_end)


@register("peft", "triadaptlora", config=TriAdaptLoraSpec)
class TriAdaptLora(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        t = ctx.specs.get("trainer") if ctx.specs else None
        self.total_steps = t.max_steps if t is not None and t.max_steps > 0 else 1000
        for p in model.parameters():
            p.requires_grad_(False)
        gens = lambda i: torch.Generator().manual_seed(ctx.seed * 1_000_003 + i)  # noqa: E731
        self.modules = wrap(model, s.target_modules, lambda i, n, lin: TriAdaptLinear(lin, s.r_init, s.r_max, s.alpha,
                                                                                     gens(i)))
        self.last: dict = {}
        return model

    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.modules.items()}

    def decision_steps(self, run) -> tuple[int, int]:
        total = getattr(run, "total_steps", None) or self.total_steps
        return self.spec.grow_start, max(self.spec.grow_start, int(self.spec.grow_until * total))

    @torch.no_grad()
    def on_step_start(self, step: int, run) -> None:
        start, end = self.decision_steps(run)
        if step < start or step > end or (step - start) % self.spec.grow_every:
            return
        scores = {n: m.importance() for n, m in self.modules.items()}
        top = max(scores.values())
        if top <= 0:
            return
        tau = threshold((step - start) / max(end - start, 1), self.spec.schedule, self.spec.tau_end)
        grew = [n for n, m in self.modules.items() if scores[n] / top >= tau and m.rank < self.spec.r_max]
        for n in grew:
            self.grow(self.modules[n], run)
        self.last = {"step": step, "tau": tau, "grew": grew, "scores": scores}
        if run is not None:
            ranks = self.ranks()
            run.metrics.log({"step": step, "triadaptlora_tau": tau, "triadaptlora_grew": len(grew),
                             "triadaptlora_params": sum(ranks.values())})
            if grew or step + self.spec.grow_every > end:
                run.console.print(f"triadaptlora: step {step}: tau {tau:.2f}, {len(grew)} modules grew; ranks "
                                  + " ".join(f"{n.removeprefix('model.layers.')}={r}" for n, r in ranks.items()))

    def grow(self, m: TriAdaptLinear, run) -> None:
        k = m.rank
        b = m.lora_B.detach().clone()
        b[:, k] = 0
        m.set_rank(k + 1)
        write(run, m.lora_A, m.lora_A.detach().clone(), row_index(0, [k]))
        write(run, m.lora_B, b, row_index(1, [k]))

    def state_dict(self):
        return {"ranks": self.ranks(), "last_growth": {k: v for k, v in self.last.items() if k != "scores"}}

    def load_state_dict(self, state):
        for n, r in (state or {}).get("ranks", {}).items():
            self.modules[n].set_rank(int(r))

    def merged(self, model):
        return merge(model)
