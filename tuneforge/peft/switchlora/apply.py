"""`peft=switchlora`: SwitchLoRA (Zhou, Wang & Xu, 2024, arXiv 2406.06564). HF PEFT does not implement it; this
is tuneforge's own code, written from the paper and the authors' released code (read, not copied).

LoRA, h = W0 x + s B A x (s = alpha / r), whose vectors -- the rows a_i of A and the columns b_i of B -- are
frequently replaced by candidates from a fixed pool (min(in, out) random vectors per matrix, never trained).
Switching row i of A to candidate c keeps the layer's function unchanged at that instant (the paper's
switching equation):
    W0 <- W0 + s b_i (a_i - c)^T,   a_i <- c          (and symmetrically b_i <- c': W0 <- W0 + s (b_i - c') a_i^T)
so W0 absorbs what the adapter held: the frozen base weights of adapted layers change during training and are
saved with the adapters (`trained_names`). The new vector changes the gradient of its counterpart (b_i for a
switched a_i), so the counterpart's Adam moments are zeroed -- only those rows/columns, the rest of the state is
untouched -- and it is frozen for N = freeze_steps steps while its moments re-warm (the paper's remedy for the
stale state; Adam's per-tensor step count is kept, as in the authors' code).

Frequency (the paper's exponentially decaying schedule): per layer and step t, the number of vectors of A (and
of B) switched is r / interval(t), interval(t) = interval_0 / theta^(t+1), theta = 0.3^(1 / descent_steps)
(the frequency is 0.3x its start at descent_steps = descent_ratio x total steps), rounded stochastically.
Vectors cycle through the indices (a cursor per matrix); an index whose A or B side is frozen is skipped.
The authors' optional rank-estimate weighting of candidates is not implemented (candidates drawn uniformly).

Every draw is a pure function of (seed, step, layer), so all ranks switch the same vectors without talking and
a resumed run switches what the uninterrupted one did. With the real engine (`ctx.engine`) the A/B values and the
moment resets go through the engine's optimizer state (ZeRO 0-2); with `ctx.engine=None` only the weights change.
Initialisation: B A != 0 at init (the paper's candidate init); W0 absorbs -s B A once, so fine-tuning starts from
the pretrained function (the paper pre-trains from scratch, where this does not matter).
"""

from __future__ import annotations

import math

import torch

from tuneforge.distributed.params import assign
from tuneforge.models.shapes import at_most_features, targets
from tuneforge.peft.adapters import adapters, merge, row_index, wrap, write
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
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers = list(wrap(model, s.target_modules, lambda i, n, lin: SwitchLoraLinear(
            lin, s.r, s.alpha, s.pool, generator(ctx.seed, -1, i))).values())
        self.switched = 0
        return model

    def trained_names(self, model):
        return super().trained_names(model) | {f"{n}.base.weight" for n in adapters(model)}

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
        r, until = layer.r, step + self.spec.freeze_steps

        def free(i):
            return step >= layer.until_a[i] and step >= layer.until_b[i]

        rows = pick(layer.cursor[0], r, n_a, free)
        cols = pick(layer.cursor[1], r, n_b, lambda i: free(i) and i not in rows)
        if not rows and not cols:
            return 0
        a, b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        w = layer.base.weight.detach().float().clone()
        if rows:
            new = self.draw(layer.pool, layer.sel_a, len(rows), g)
            c = layer.cand_a[new].to(a.dtype)
            w += layer.scaling * b[:, rows].float() @ (a[rows].float() - c.float())
            a[rows] = c
            for i, j in zip(rows, new):
                layer.sel_a[i], layer.until_b[i] = j, until  # b_i's gradient changed: freeze + reset it
            layer.cursor[0] = (rows[-1] + 1) % r
        if cols:
            new = self.draw(layer.pool, layer.sel_b, len(cols), g)
            c = layer.cand_b[new].T.to(b.dtype)
            w += layer.scaling * (b[:, cols].float() - c.float()) @ a[cols].float()
            b[:, cols] = c
            for i, j in zip(cols, new):
                layer.sel_b[i], layer.until_a[i] = j, until
            layer.cursor[1] = (cols[-1] + 1) % r
        assign(layer.base.weight, w)
        write(engine, layer.lora_A, a, row_index(0, cols) if cols else None)
        write(engine, layer.lora_B, b, row_index(1, rows) if rows else None)
        return len(rows) + len(cols)

    @staticmethod
    def draw(pool: int, selected: list[int], k: int, g: torch.Generator) -> list[int]:
        """k candidates not currently held by any vector of the matrix, uniformly."""
        held = set(selected)
        free = [j for j in range(pool) if j not in held]
        return [free[int(j)] for j in torch.randperm(len(free), generator=g)[:k]]

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
