"""`peft=triadaptlora`: TriAdaptLoRA (Liang, Wang & Zeng, 2025, arXiv 2501.08008). HF PEFT does not implement it;
this is tuneforge's own code, written from the paper and the authors' released code (read, not copied).

- Triangular split: Delta W = s B C A with a trainable r x r core C = L + U, L lower triangular (with the
  diagonal) and U strictly upper triangular. Growing the rank r -> r + g adds g rows of A, g columns of B, g rows
  to L and g columns to U (B's and U's new columns zero, L's new diagonal 1, A's new rows LoRA-initialised: the
  function is unchanged).
- Importance (normalized Frobenius norm): n_l = ||C_l||_F / b_l, b_l = 1 + the module's growth events; the score
  of a decision is its increase since the previous decision, I_l = n_l(t) - n_l(t_prev), as in the released code.
- Adaptive rank growth with a dynamic threshold: every grow_every steps after warmup, while the total rank is
  below the budget (reference_rank x modules), k(t) modules grow by grow_by: k = int(remaining x p) (linear,
  the paper's best) or int(remaining^p) (exponential), p = (t - warmup) / (T - warmup), at least 1. The
  threshold is the k-th largest score; every module scoring at least that (and above zero: a core that did not
  move carries no signal) grows -- the most important first, more of them as the run progresses. A module stops at r_max (tuneforge's allocation cap).
Deviations, for a fixed-shape optimizer (one engine for the whole run, ZeRO 0-2): everything is allocated at
r_max with a rank mask (masked entries are detached: no gradient; their Adam state never starts, so they never
move, weight decay included); the scale s = alpha / r_init is fixed (the released code divides by the current
rank, which changes the function at every growth); the initial core is the identity, at init and on every grown
block (the released code starts the core and every grown block at zero: an exact saddle, since dL/dB[:, new] is
proportional to C[new, :] A x = 0 and dL/dC[new, :] to B[:, new] = 0, so its grown ranks -- and, with a zero
initial core, every adapter parameter -- get no gradient).
Fresh Adam state for a grown block, as the released code's new parameter group (optimizer.add_param_group: new
tensors, step 0): the optimizer keeps a step count per element (tuneforge.optim.element_step_adamw, asked for by
the spec's caps: `element_steps`) and growth zeroes the moments and step counts of the new rows of A and L and
columns of B and U (tuneforge.peft.adapters.write), so their bias correction starts afresh within the same tensor.
Departure: an element's count starts with its first non-zero gradient (a new param group's counts start at the
first step; the new block's L rows and A rows see a zero gradient until B's new columns move).
Growth writes only what changes (L's new diagonal, B's and U's new columns), so with bf16/fp16 weights the fp32
masters of every other row are untouched.
Ranks are printed at each growth and saved in the method state (checkpoints; restored on resume).
"""

from __future__ import annotations

import math

import torch

from tuneforge.peft.adapters import merge, row_index, wrap, write
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.triadaptlora.layer import TriAdaptLinear
from tuneforge.peft.triadaptlora.spec import TriAdaptLoraSpec
from tuneforge.registry import register


def n_growing(remaining: int, progress: float, growth: str) -> int:
    """k(t): how many modules grow at a decision, from the remaining rank budget and the run's progress."""
    p = min(max(progress, 0.0), 1.0)
    k = int(remaining * p) if growth == "linear" else int(math.exp(p * math.log(max(remaining, 1))))
    return max(k, 1)


@register("peft", "triadaptlora", config=TriAdaptLoraSpec)
class TriAdaptLora(TuningMethod):
    def apply(self, model, ctx):
        s = self.spec
        for p in model.parameters():
            p.requires_grad_(False)
        gens = lambda i: torch.Generator().manual_seed(ctx.seed * 1_000_003 + i)  # noqa: E731
        self.modules = wrap(model, s.target_modules, lambda i, n, lin: TriAdaptLinear(lin, s.r_init, s.r_max, s.alpha,
                                                                                     gens(i)))
        self.budget = s.reference_rank * len(self.modules)
        self.last: dict = {}
        return model

    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.modules.items()}

    @torch.no_grad()
    def on_step_start(self, ctx) -> None:
        s, step, total = self.spec, ctx.step, ctx.total_steps
        remaining = self.budget - sum(self.ranks().values())
        if step <= s.warmup or (step - s.warmup) % s.grow_every or remaining <= 0:
            return
        norms = {n: m.core_norm() for n, m in self.modules.items()}
        scores = {n: norms[n] - m.norm for n, m in self.modules.items()}
        for n, m in self.modules.items():
            m.norm = norms[n]
        open_ = sorted((sc for n, sc in scores.items() if self.modules[n].rank < s.r_max), reverse=True)
        if not open_:
            return
        k = min(n_growing(remaining, (step - s.warmup) / max(total - s.warmup, 1), s.growth), len(open_))
        threshold = open_[k - 1]
        grew = [n for n, m in self.modules.items() if m.rank < s.r_max and scores[n] >= threshold and scores[n] > 0]
        for n in grew:
            self.grow(self.modules[n], ctx.engine)
        self.last = {"step": step, "k": k, "threshold": threshold, "grew": grew, "scores": scores, "norms": norms}
        ranks = self.ranks()
        ctx.metrics({"step": step, "triadaptlora_grew": len(grew), "triadaptlora_total_rank": sum(ranks.values())})
        ctx.log(f"triadaptlora: step {step}: {len(grew)} modules grew (k={k}); total rank "
                f"{sum(ranks.values())}/{self.budget}; ranks "
                + " ".join(f"{n.removeprefix('model.layers.')}={r}" for n, r in ranks.items()))

    def grow(self, m: TriAdaptLinear, engine) -> None:
        """Unmask the next grow_by ranks: their B and U columns start at zero and their L rows at the identity (1 on
        the new diagonal), so the function is unchanged (B[:, new] = 0) while B's new columns get a gradient
        (s (C A x)[new] != 0). The Adam state (moments, step counts) of every new row/column restarts; only the
        new rows/columns are written (the rest of the weights and optimizer state is untouched)."""
        r0 = m.rank
        r1 = min(r0 + self.spec.grow_by, self.spec.r_max)
        new = list(range(r0, r1))
        lo = torch.zeros(len(new), m.lora_L.shape[1])
        lo[range(len(new)), new] = 1  # the new core diagonal starts at the identity: no saddle (module docstring)
        m.set_rank(r1)
        m.blocks += 1
        rows, cols = row_index(0, new), row_index(1, new)
        write(engine, m.lora_A, reset=rows)
        write(engine, m.lora_B, cols, torch.zeros(m.lora_B.shape[0], len(new)), cols)
        write(engine, m.lora_L, rows, lo, rows)
        write(engine, m.lora_U, cols, torch.zeros(m.lora_U.shape[0], len(new)), cols)

    def state_dict(self):
        return {"ranks": self.ranks(), "blocks": {n: m.blocks for n, m in self.modules.items()},
                "norms": {n: m.norm for n, m in self.modules.items()},
                "last_growth": {k: v for k, v in self.last.items() if k not in ("scores", "norms")}}

    def load_state_dict(self, state):
        state = state or {}
        for n, r in state.get("ranks", {}).items():
            m = self.modules[n]
            m.set_rank(int(r))
            m.blocks, m.norm = int(state["blocks"][n]), float(state["norms"][n])

    def merged(self, model):
        return merge(model)
