"""`peft=switchlora`: SwitchLoRA (Zhou, Wang & Xu, 2024, arXiv 2406.06564). HF PEFT does not implement it; this
is tuneforge's own code, written from the paper and the authors' released code (github.com/asfsdsf/SwitchLoRA:
switchlora/switch_lora.py, switchlora/optimizer.py; read, not copied).

LoRA, h = W0 x + s B A x (s = alpha / r), whose vectors -- the rows a_i of A and the columns b_i of B -- are
frequently replaced by candidates from a pool (min(in, out) random vectors per matrix). Switching row i of A to
candidate c keeps the layer's function unchanged at that instant (the paper's switching equation):
    W0 <- W0 + s b_i (a_i - c)^T,   a_i <- c          (and symmetrically b_i <- c': W0 <- W0 + s (b_i - c') a_i^T)
so W0 absorbs what the adapter held: the frozen base weights of adapted layers change during training and are
saved with the adapters (`trained_names`). The new vector changes the gradient of its counterpart (b_i for a
switched a_i), so the counterpart's Adam state restarts -- its moments and its step count, only those
rows/columns; the rest of the state is untouched -- and it is frozen for N = freeze_steps steps (the paper's
remedy for the stale state).

Where the code follows the authors' code, and where it departs:
- Adam keeps a step count per element (tuneforge.optim.element_step_adamw, the client optimizer these caps ask
  for: `element_steps`), zeroed with the moments of the restarted rows (their _ZERO_SWITCH_STEP_STATE = True;
  their StepAdamW has a count per row of A and per column of B): the first update of a restarted row is a fresh
  Adam step. Departure: a frozen row does not count steps and gets no weight decay, so that first update is
  exactly a fresh Adam step (the authors count the frozen steps: k = N + 1 at the first real update).
- The switched-out vector (its trained value: the optimizer's fp32 master where there is one) is written back
  into the pool slot it was drawn from, as the authors' switch does; a later switch may draw it again.
- Candidates are drawn in pool order by default (candidate_order=sequential, their _CONTINUOUS_SWITCH = True):
  rows start on the last r candidates (B's window shifted by r // 2) and each switch takes the next candidate
  not held by the matrix. Departure: where a frozen index is skipped (below) the next candidate is the next one
  not held, where theirs would follow the previous row's. candidate_order=random draws uniformly among the
  candidates not held (their --discontinuous_switch; their optional rank-estimate weighting is not implemented).
- Frequency (the paper's exponentially decaying schedule): per layer and step t, the number of vectors of A (and
  of B) switched is r / interval(t), interval(t) = interval_0 / theta^(t+1), theta = 0.3^(1 / descent_steps)
  (the frequency is 0.3x its start at descent_steps = descent_ratio x total steps), rounded stochastically.
  Vectors cycle through the indices (a cursor per matrix, B's starting at r // 2 as theirs); departure: an index
  whose A or B side is frozen is skipped (the authors limit the count so the cursors never reach one).
- Switches happen at the start of a step, before its forward (theirs: after the backward, before the optimizer
  step, with the counterpart's gradient zeroed for N steps; the same schedule shifted by one forward).
- Precision: only the switched rows are written (weights, and the fp32 masters of a bf16/fp16 model at those rows
  only); with bf16/fp16 weights W0 is kept in fp32 (`w0_fp32`), the switching equation is applied there exactly
  and W0 is its rounding, so rounding errors never accumulate over switches (the function stays within one bf16
  step of the exact one). The authors train fp32/bf16 weights directly.
- Initialisation: B A != 0 at init (the paper's candidate init); W0 absorbs -s B A once, so fine-tuning starts
  from the pretrained function (the paper pre-trains from scratch, where this does not matter).

Every draw is a pure function of (seed, step, layer), so all ranks switch the same vectors without talking and
a resumed run switches what the uninterrupted one did (the pools, cursors and fp32 W0 are saved in checkpoints).
With the real engine (`ctx.engine`) the A/B values and the state resets go through the engine's optimizer state
(tuneforge.peft.adapters.write, any ZeRO stage the method runs under: 0-2); with `ctx.engine=None` only the
weights change.
"""

from __future__ import annotations

import math

import torch

from tuneforge.distributed.params import assign
from tuneforge.models.shapes import at_most_features, targets
from tuneforge.peft.adapters import adapters, master, merge, row_index, wrap, write
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.switchlora.layer import SwitchLoraLinear
from tuneforge.peft.switchlora.spec import SwitchLoraSpec
from tuneforge.registry import register


def generator(seed: int, step: int, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + layer * 104_729 + 1)


def switch_rate(step: int, descent_steps: int) -> float:
    """theta^(t+1): 1 at the start, 0.3 at descent_steps."""
    return max(0.3 ** ((step + 1) / max(descent_steps, 1)), 1e-8)


def expected_switches(step: int, r: int, interval: float, descent_steps: int) -> float:
    return r * switch_rate(step, descent_steps) / interval


def draw_count(expected: float, g: torch.Generator) -> int:
    whole = math.floor(expected)
    return whole + int(torch.rand(1, generator=g).item() < expected - whole)


def pick(cursor: int, r: int, k: int, ok) -> list[int]:
    """The next k indices from `cursor` (cyclic) that satisfy ok(i)."""
    return [i for i in ((cursor + j) % r for j in range(r)) if ok(i)][:k]


@register("peft", "switchlora", config=SwitchLoraSpec)
class SwitchLora(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        """Each of the r vectors of A (of B) holds its own candidate, drawn from min(in, out) candidates."""
        linears, out = targets(shape, spec.target_modules)
        return out + at_most_features("peft.r", spec.r, linears)

    def apply(self, model, ctx):
        s = self.spec
        self.seed = ctx.seed
        precision = ctx.specs.get("precision")
        w0_master = precision is not None and precision.params != "fp32"
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers = list(wrap(model, s.target_modules, lambda i, n, lin: SwitchLoraLinear(
            lin, s.r, s.alpha, s.pool, generator(ctx.seed, -1, i), s.candidate_order, w0_master)).values())
        self.switched = 0
        return model

    def trained_names(self, model):
        return super().trained_names(model) | {f"{n}.base.weight" for n in adapters(model)}

    def resume_buffers(self, model):
        return {f"{n}.{b}" for n, m in adapters(model).items() for b in ("cand_a", "cand_b", "w0_fp32")
                if hasattr(m, b)}

    def descent_steps(self, total_steps: int) -> int:
        return self.spec.descent_steps or max(1, round(self.spec.descent_ratio * total_steps))

    @torch.no_grad()
    def on_step_start(self, ctx) -> None:
        s, n, step = self.spec, 0, ctx.step
        expected = expected_switches(step, s.r, s.interval, self.descent_steps(ctx.total_steps))
        for i, layer in enumerate(self.layers):
            if layer.pool > s.r:
                n += self.switch(layer, step, draw_count(expected, g := generator(self.seed, step, i)),
                                 draw_count(expected, g), g, ctx.engine)
            layer.set_frozen(step)
        self.switched += n
        if n:
            ctx.metrics({"step": step, "switchlora_switched": n})

    def switch(self, layer: SwitchLoraLinear, step: int, n_a: int, n_b: int, g: torch.Generator, engine) -> int:
        """Switch n_a rows of A and n_b columns of B; returns how many vectors were switched."""
        r, until, spare = layer.r, step + self.spec.freeze_steps, layer.pool - layer.r

        def free(i):
            return step >= layer.until_a[i] and step >= layer.until_b[i]

        rows = pick(layer.cursor[0], r, n_a, free)[:spare]
        cols = pick(layer.cursor[1], r, n_b, lambda i: free(i) and i not in rows)[:spare]
        if not rows and not cols:
            return 0
        a_fp32, b_fp32 = master(engine, layer.lora_A), master(engine, layer.lora_B)  # the trained values
        a, b = layer.lora_A.detach().float(), layer.lora_B.detach().float()  # what the forward reads
        w = layer.w0_fp32 if hasattr(layer, "w0_fp32") else layer.base.weight.detach().float().clone()
        new_a = new_b = None
        if rows:
            slots = self.draw(layer, 0, len(rows), g)
            new_a = layer.cand_a[slots].clone()
            c = new_a.to(layer.lora_A.dtype).float()  # what the forward will read
            w += layer.scaling * b[:, rows] @ (a[rows] - c)
            for i, j in zip(rows, slots):
                layer.cand_a[layer.sel_a[i]] = a_fp32[i]  # the switched-out vector back into its slot
                layer.sel_a[i], layer.until_b[i] = j, until  # b_i's gradient changed: freeze + restart it
            layer.cursor[0] = (rows[-1] + 1) % r
        if cols:
            slots = self.draw(layer, 1, len(cols), g)
            new_b = layer.cand_b[slots].T.clone()
            c = new_b.to(layer.lora_B.dtype).float()
            w += layer.scaling * (b[:, cols] - c) @ a[cols]  # cols exclude rows: a[cols] did not switch
            for i, j in zip(cols, slots):
                layer.cand_b[layer.sel_b[i]] = b_fp32[:, i]
                layer.sel_b[i], layer.until_a[i] = j, until
            layer.cursor[1] = (cols[-1] + 1) % r
        assign(layer.base.weight, w)
        write(engine, layer.lora_A, row_index(0, rows) if rows else None, new_a, row_index(0, cols) if cols else None)
        write(engine, layer.lora_B, row_index(1, cols) if cols else None, new_b, row_index(1, rows) if rows else None)
        return len(rows) + len(cols)

    def draw(self, layer: SwitchLoraLinear, side: int, k: int, g: torch.Generator) -> list[int]:
        """k candidate slots not currently held by any vector of A (side 0) or B (side 1): the next ones in pool
        order (sequential), or uniformly (random)."""
        held = set(layer.sel_a if side == 0 else layer.sel_b)
        if self.spec.candidate_order == "random":
            free = [j for j in range(layer.pool) if j not in held]
            return [free[int(j)] for j in torch.randperm(len(free), generator=g)[:k]]
        out, j = [], layer.next[side]
        while len(out) < k:
            if j not in held:
                out.append(j)
            j = (j + 1) % layer.pool
        layer.next[side] = j
        return out

    def state_dict(self):
        return {"switched": self.switched, "layers": [layer.state() for layer in self.layers]}

    def load_state_dict(self, state):
        if not state:
            return
        self.switched = int(state["switched"])
        for layer, st in zip(self.layers, state["layers"], strict=True):
            layer.load(st)

    def merged(self, model):
        return merge(model)
