"""`selection=mates`: MATES, model-aware data selection with a data-influence model (Yu, Das, Xiong, NeurIPS 2024,
arXiv 2406.06046; reference code github.com/cxcscmu/MATES).

At step 0 and every `reselect_every` steps, on every rank (the probes step the DeepSpeed engine):
1. Oracle, locally probed (§3.2): for `probes` candidates x drawn at random from the pool, take one real optimizer
   step of the run's engine on x alone, from the current weights *and optimizer state*, and measure
   I_M(x; D_r) = L(D_r | M) - L(D_r | A(M, x)), the drop of the loss on the reference set D_r; then restore the
   engine exactly (weights, fp32 masters, Adam moments and step counts, LR schedule, engine counters, RNG:
   `Engine.snapshot/restore`).
2. Data-influence model (§3.3): a ridge regression from each sample's embedding -- the tuned model's own last
   hidden states, mean-pooled over its tokens -- to the z-scored oracle, fitted on the probes and predicting
   every candidate.
3. Selection: Gumbel-top-k over the predictions, k = `fraction` (or `count`) of the candidates: the top k of
   pred / `temperature` + G, G ~ Gumbel(0, 1) drawn from a generator seeded by (run seed, step), so a resumed run
   re-selects identically; temperature -> 0 is plain top-k.
Each re-selection is written to <run_dir>/selection/step_<N>.json: chosen ids, every prediction (null for the
reference samples), the probed ids and their oracle values, the reference ids. The initial choice (before the
model exists) is a seeded random subset of the candidates, as in the paper's random warm-up stage, and is replaced
at step 0.

Departures from the reference code, and why:
- Reference set: `reference` samples held out of the training pool (seeded), never trained on. The paper uses a
  reference task's own data (LAMBADA train); a fine-tuning run has no such task, and the run's eval set would
  leak the reported metric into the selection.
- Data-influence model: ridge regression (closed form, in torch) on the tuned model's mean-pooled hidden states,
  instead of fine-tuning BERT-base with a regression head on the text: no download at run time, no second model
  to train, and the embeddings follow the model being trained. Consequently it is refitted from scratch at each
  re-selection on that re-selection's probes (the paper continues training the BERT model stage to stage).
- Oracle sign: the reference code records the post-step reference loss and keeps the *lowest* predictions; here
  the oracle is the loss drop and the *highest* predictions are kept (same order, since L(D_r | M) is constant
  within a re-selection), and the Gumbel noise is added the way Gumbel-top-k samples (pred / tau + G, top k).
  The reference code adds G to pred / tau and keeps the bottom k, which is not a sample from softmax(-pred / tau).
- Probe step: the run's own optimizer, schedule, gradient clipping and precision (the reference code reloads a
  checkpoint per probe and re-creates the LR by hand); one step of the candidate's mean token loss whatever the
  run's gradient accumulation. Probed candidates are drawn uniformly from the pool (reference: a shuffled stream).
- Scale: the paper probes ~80k samples per stage with 8 GPUs; `probes` defaults to 32. Every rank probes the
  same candidates and embeds the whole pool (no sharding): simple and collective-safe, not fast.
- ZeRO-3 is refused (its weights are partitions gathered per use: not snapshotted here), and so are optimizers
  whose states cannot be copied (`opaque_states`) and optimizer offload to NVMe.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tuneforge.config.checks import optimizer_owner
from tuneforge.config.spec import Spec, knob, positive
from tuneforge.distributed import dist
from tuneforge.errors import InputError
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count, record
from tuneforge.selection.mates.influence import embeddings, fit_predict, gumbel_top_k, probe


@dataclass
class MatesSelectionSpec(Spec):
    name: str = knob("mates", "MATES: probed one-step influence on a held-out reference set, a ridge model on the "
                              "LM's embeddings, Gumbel-top-k; re-selected during training")
    fraction: float = knob(0.2, "share of the candidate samples kept (the paper keeps 20%; ignored when count > 0)")
    count: int = knob(0, "number of samples kept (0: use fraction)")
    reselect_every: int = knob(100, "re-select every N steps (and at step 0)")
    probes: int = knob(32, "candidates whose influence is probed with a real optimizer step per re-selection")
    reference: int = knob(16, "pool samples held out (seeded) as the reference set D_r, never trained on")
    temperature: float = knob(0.5, "Gumbel-top-k temperature (the paper's 0.5; -> 0: plain top-k)")
    ridge: float = knob(1.0, "L2 strength of the data-influence model (ridge regression on standardized features)")
    batch_size: int = knob(8, "samples per forward pass when embedding the pool and scoring the reference set")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        out += positive(self, "count", allow_zero=True) + positive(self, "reselect_every", "reference", "batch_size")
        out += [] if self.probes >= 2 else [f"probes={self.probes} must be >= 2 (the influence model is fitted on them)"]
        out += [] if self.temperature > 0 else [f"temperature={self.temperature} must be > 0 (1e-8: plain top-k)"]
        return out + ([] if self.ridge > 0 else [f"ridge={self.ridge} must be > 0"])

    def cross_problems(self, specs: dict) -> list[str]:
        z, (og, o) = specs["zero"], optimizer_owner(specs)
        why = ("selection=mates probes each candidate with a real optimizer step and restores the weights and "
               "optimizer state exactly")
        out = []
        if z.stage == 3:
            out.append(f"{why}, which is not supported under ZeRO-3 (partitioned weights): use zero=zero2 (or "
                       "zero0, zero1, zero2_offload), or another selection")
        elif z.offload_optimizer == "nvme":
            out.append(f"{why}, which is not supported with the optimizer state on NVMe: use zero=zero2_offload")
        if o.caps.opaque_states:
            out.append(f"{why}, but {og}={o.name}'s states cannot be copied ({o.caps.opaque_states}): use "
                       "optim=adamw or optim=adamw8bit, or another selection")
        return out


def split(n: int, spec: MatesSelectionSpec, seed: int) -> tuple[list[int], list[int]]:
    """(reference ids, candidate ids): the seeded held-out reference set and the rest of the pool."""
    if n < spec.reference + 2:
        raise InputError([f"selection=mates needs more than selection.reference={spec.reference} samples (the pool "
                          f"has {n}): lower selection.reference or add data"], title="bad selection")
    reference = sorted(random.Random(f"mates-reference-{seed}").sample(range(n), spec.reference))
    held = set(reference)
    return reference, [i for i in range(n) if i not in held]


@register("selection", "mates", config=MatesSelectionSpec)
class Mates(Selector):
    needs_model = False  # the first choice is the paper's random warm-up; the model selects from step 0 on

    def select(self, samples, ctx):
        s = self.spec
        _, candidates = split(len(samples), s, ctx.seed)
        k = keep_count(s.fraction, s.count, len(candidates))
        return sorted(random.Random(f"mates-warmup-{ctx.seed}").sample(candidates, k))

    def on_step_start(self, ctx) -> None:
        if ctx.step % self.spec.reselect_every:
            return
        if ctx.engine is None:
            raise RuntimeError("selection=mates probes with the run's engine: it needs a TrainContext with one")
        chosen = dist.broadcast_object(self.choose(ctx, ctx.data.t.seed))  # the run's trainer.seed
        ctx.data.use(chosen, ctx.step)
        ctx.log(f"selection: step {ctx.step}: MATES probed {self.spec.probes} samples, re-selected {len(chosen)} of "
                f"{len(ctx.data.pool)}")

    def choose(self, ctx, seed: int) -> list[int]:
        """Probe, fit, predict, select (every rank; rank 0's choice is used)."""
        s, pool, pad = self.spec, ctx.data.pool, ctx.tokenizer.pad_token_id
        reference, candidates = split(len(pool), s, seed)
        rng = torch.Generator().manual_seed(seed * 1_000_003 + ctx.step)
        probed = sorted(candidates[i] for i in torch.randperm(len(candidates), generator=rng)[:s.probes].tolist())
        oracle = probe(ctx.engine, [pool[i] for i in probed], [pool[i] for i in reference], s.batch_size, pad)
        finite = [(i, o) for i, o in zip(probed, oracle) if o == o]
        feats = embeddings(ctx.model, [pool[i] for i in candidates], s.batch_size, pad)
        row = {c: r for r, c in enumerate(candidates)}
        if len(finite) >= 2:
            pred = fit_predict(feats, [row[i] for i, _ in finite], [o for _, o in finite], s.ridge)
        else:  # every probe step was skipped (non-finite gradients): no signal, select at random
            pred = torch.zeros(len(candidates), dtype=torch.float64)
        k = keep_count(s.fraction, s.count, len(candidates))
        chosen = sorted(candidates[r] for r in gumbel_top_k(pred, k, s.temperature, rng))
        scores: list[float | None] = [None] * len(pool)
        for r, c in enumerate(candidates):
            scores[c] = float(pred[r])
        record(ctx.run_dir, ctx.step, chosen, scores, probed=probed, oracle=oracle, reference=reference)
        return chosen
