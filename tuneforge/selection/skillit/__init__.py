"""`selection=skillit`: Skill-it online data selection (Chen et al., "Skill-it! A Data-Driven Skills Framework for
Understanding and Training Language Models", arXiv 2307.14430, Algorithm 1; reference code
github.com/HazyResearch/skill-it, trainer/mw_trainer.py).

Skills are the tasks of multi-task data (`data.tasks`, each row's `data.task_field`). A skills graph A (k x k,
A[i][j] > 0: training on skill i lowers the loss of skill j) comes from the user or from short runs
(`graph=learn`: from the model before training, train a copy of the trainable weights on skill i for
`learn_steps` steps and set A[i][j] = max(0, (L_j before - L_j after) / L_j before); the model itself is never
touched). Training runs in rounds of `update_steps` steps. At the start of round t (steps t*U ... t*U+U-1) every
skill's loss L_j is measured on its held-out samples, and the mixture is

    p_i ∝ p0_i * exp(eta * sum_j A[i][j] * sum_{tau = t-w+1 .. t} L_j(f_tau))        (Algorithm 1, window w)

(round 0 uses losses of 1, as the reference code does: p ∝ p0 * exp(eta * A @ 1)). The sampler follows p exactly:
the round's U * global_batch training samples hold round(p_i * U * global_batch) samples of skill i (largest
remainders), drawn from skill i's pool by a permutation seeded by (seed, step, skill) and cycled when a skill has
fewer samples; they become the training set through `ctx.data.use`, so the round's U steps are one pass over them.
Each update is recorded in run_dir/selection/step_<t*U>.json (weights, losses, graph, chosen indices), and a
resumed run rebuilds the loss window from those records.

Departures from the reference code:
- Losses enter the window once per round, measured at the round's start (the reference also evaluates every
  `ckpt_steps` inside a round and sums the last w of those evaluations); this is the paper's Algorithm 1.
- A graph entry is used as given (the reference turns a synthetic 0/1 graph's off-diagonal 1s into 0.5 itself);
  its optional tricks (loss normalisation, eta schedule, dampening edges, lone nodes) are left out.
- Validation samples are `eval_per_skill` samples of each skill held out of the training pool (the reference
  reads a separate validation split); per-skill loss is the mean of the samples' mean token losses, as there.
- Counts per skill use largest remainders (the reference floors and gives the rest to the last skill), and each
  skill's samples are drawn without replacement until its pool is used up.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from tuneforge.distributed import dist
from tuneforge.errors import RunError
from tuneforge.registry import register
from tuneforge.selection import Selector, record
from tuneforge.selection.skillit.spec import SkillitSpec

__all__ = ["Skillit", "SkillitSpec", "counts", "mixture"]


def mixture(prior: list[float], graph: list[list[float]], window: list[list[float]], eta: float) -> list[float]:
    """p ∝ p0 * exp(eta * A @ (sum of the loss vectors in `window`)), normalised (computed in log space)."""
    k = len(prior)
    total = [sum(w[j] for w in window) for j in range(k)]
    logits = [math.log(prior[i]) + eta * sum(graph[i][j] * total[j] for j in range(k)) for i in range(k)]
    top = max(logits)
    p = [math.exp(v - top) for v in logits]
    return [v / sum(p) for v in p]


def counts(p: list[float], total: int) -> list[int]:
    """Integers summing to `total`, proportional to p (largest remainders, ties to the lower skill)."""
    raw = [v * total for v in p]
    out = [math.floor(v) for v in raw]
    for i in sorted(range(len(p)), key=lambda i: (out[i] - raw[i], i))[:total - sum(out)]:
        out[i] += 1
    return out


def split(tasks: list, k: int, per_skill: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(training, held-out) pool indices of each skill: `per_skill` held out at random (at most half a skill)."""
    train, held = [], []
    for skill in range(k):
        idx = [i for i, t in enumerate(tasks) if t == skill]
        random.Random(seed * 1_000_003 + skill).shuffle(idx)
        n = min(per_skill, len(idx) // 2)
        held.append(sorted(idx[:n]))
        train.append(sorted(idx[n:]))
    return train, held


def draw(train: list[list[int]], n: list[int], seed: int, step: int) -> list[int]:
    """n[i] samples of skill i, without replacement until the skill's pool is used up (seeded by seed, step, i)."""
    out = []
    for i, (pool, m) in enumerate(zip(train, n)):
        order = list(pool)
        random.Random(f"skillit:{seed}:{step}:{i}").shuffle(order)
        out += [order[j % len(order)] for j in range(m)]
    return out


def skill_losses(model, held: list[list], batch_size: int, pad_id: int, params: dict | None = None) -> list[float]:
    """Per skill: mean over its held-out samples of each sample's mean token loss (`params`: weights to use in
    place of the model's own, e.g. a trained copy)."""
    from tuneforge.selection.loss import sample_losses

    return [sum(per) / len(per) for per in (sample_losses(model, samples, batch_size, pad_id, params)
                                            for samples in held)]


def learn_graph(model, train: list[list], held: list[list], spec: SkillitSpec, pad_id: int, seed: int) -> list[list[float]]:
    """A[i][j] = max(0, relative drop of skill j's held-out loss after `learn_steps` AdamW steps on skill i), trained
    on a copy of the trainable weights: the model and its optimizer are left as they were."""
    import torch
    from torch.func import functional_call

    from tuneforge.data.batching import collate

    device = next(model.parameters()).device
    before = skill_losses(model, held, spec.batch_size, pad_id)
    graph = []
    for i, pool in enumerate(train):
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
        opt = torch.optim.AdamW(params.values(), lr=spec.learn_lr)
        rng = random.Random(seed * 1_000_003 + i)
        for _ in range(spec.learn_steps):
            b = collate(rng.sample(pool, min(spec.learn_batch, len(pool))), pad_id)
            out = functional_call(model, params, args=(), kwargs={k: b[k].to(device) for k in
                                                                  ("input_ids", "attention_mask", "labels")})
            out.loss.backward()
            opt.step()
            opt.zero_grad()
        after = skill_losses(model, held, spec.batch_size, pad_id, params)
        graph.append([max(0.0, (b0 - a) / b0) for b0, a in zip(before, after)])
    return graph


@register("selection", "skillit", config=SkillitSpec)
class Skillit(Selector):
    def __init__(self, spec):
        super().__init__(spec)
        self.state: dict | None = None  # seed, per-skill training and held-out pool indices (from select)
        self.graph: list[list[float]] | None = None
        self.history: list[list[float]] = []  # each update's per-skill held-out losses

    def select(self, samples, ctx):
        """Hold out `eval_per_skill` samples of each skill; train on the rest (the first update re-draws them)."""
        tasks = [getattr(s, "task", None) for s in samples]
        k = 1 + max((t for t in tasks if t is not None), default=-1)
        if None in tasks or k < 2:
            raise RunError("selection=skillit needs every training sample labelled with one of at least 2 skills "
                           "(data.task_field / data.tasks)")
        train, held = split(tasks, k, self.spec.eval_per_skill, ctx.seed)
        if empty := [i for i in range(k) if not train[i] or not held[i]]:
            raise RunError(f"selection=skillit: skills {empty} have fewer than 2 samples: each needs training and "
                           "held-out samples")
        self.state = {"seed": ctx.seed, "train": train, "held": held}
        if ctx.run_dir is not None:
            (Path(ctx.run_dir) / "selection").mkdir(parents=True, exist_ok=True)
            (Path(ctx.run_dir) / "selection" / "skillit.json").write_text(json.dumps(self.state))
        return sorted(i for pool in train for i in pool)

    def on_train_start(self, ctx) -> None:
        """Every rank gets rank 0's split; a resumed run rebuilds the graph and the loss window from the records."""
        state, graph, history = self.state, self.graph, self.history
        if dist.is_main() and ctx.run_dir is not None:
            out = Path(ctx.run_dir) / "selection"
            if state is None and (out / "skillit.json").is_file():
                state = json.loads((out / "skillit.json").read_text())
            if ctx.step > 0 and not history:
                recs = [json.loads((out / f"step_{s}.json").read_text())
                        for s in range(0, ctx.step, self.spec.update_steps) if (out / f"step_{s}.json").is_file()]
                graph, history = (recs[0]["graph"] if recs else None), [r["losses"] for r in recs]
        self.state, self.graph, self.history = dist.broadcast_object((state, graph, history))
        if self.state is None:
            raise RunError("selection=skillit: no skill split (run_dir/selection/skillit.json) to resume from")

    def on_step_start(self, ctx) -> None:
        s, step = self.spec, ctx.step
        if step % s.update_steps:
            return
        pool, pad = ctx.data.pool, ctx.tokenizer.pad_token_id
        train, held = self.state["train"], [[pool[i] for i in idx] for idx in self.state["held"]]
        k = len(train)
        was_training = ctx.model.training
        ctx.model.eval()
        if self.graph is None:
            if s.graph == "learn":
                self.graph = learn_graph(ctx.model, [[pool[i] for i in idx] for idx in train], held, s, pad,
                                         self.state["seed"])
            else:
                self.graph = [[float(i == j) for j in range(k)] for i in range(k)] if s.graph == "identity" else s.graph
        losses = skill_losses(ctx.model, held, s.batch_size, pad)
        ctx.model.train(was_training)
        self.history.append(losses)
        prior = list(s.prior) or [1.0] * k
        weights = mixture(prior, self.graph, self.history[-s.window:] if step else [[1.0] * k], s.eta)
        n = counts(weights, s.update_steps * ctx.data.plan.global_batch)
        chosen = draw(train, n, self.state["seed"], step)
        weights, chosen = dist.broadcast_object((weights, chosen))
        ctx.data.use(chosen, step)
        record(ctx.run_dir, step, chosen, None, weights=weights, losses=losses, counts=n, graph=self.graph)
        ctx.log(f"selection: step {step}: skill mixture " + ", ".join(f"{w:.3f}" for w in weights)
                + " (held-out losses " + ", ".join(f"{v:.3f}" for v in losses) + ")")
