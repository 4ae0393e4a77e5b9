"""`selection=middo`: Middo (Tang et al., 2025, arXiv 2508.21589; EMNLP 2025), model-informed dynamic data
optimization: at every epoch boundary the model being trained diagnoses its own training set and the flagged
samples are replaced, keeping the set's size, so the data evolves with the model (a closed loop).

Start: a seeded random `fraction` of the pool is the training set (the rest is the reserve that replacements come
from); the pool's losses under the initial model are kept as the "previous" losses. At each epoch boundary (every
`steps_per_epoch` steps of the batch plan, tuneforge/data/batching.py), with the current model, for every pool
sample (diagnose.py):
- complexity: flagged when its loss under the previous model AND under the current one are both above
  mean + m sigma of the training set (paper Sec. 3.2.1; complexity_filter.py);
- diversity: the mean cosine similarity of its mean-pooled last hidden state to its k = `neighbours` nearest
  training samples; flagged below mean - m sigma (Sec. 3.2.2; diversity_filter.py);
- quality: the model's own judgement, log p(" Yes") - log p(" No") as the next token after diagnose.QUALITY_PROMPT
  holding the sample's text; flagged below mean - m sigma (Sec. 3.2.3);
with m = `sigma`. The refiner (refine.py) acts on the flagged training samples: `drop` replaces them with unflagged
reserve samples, `downweight` keeps them at a loss weight, `openai` replaces them with rewrites from an
OpenAI-compatible endpoint. Then the current losses become the previous
ones. Each loop is written to <run_dir>/selection/step_<N>.json (the choice, every signal, the flags, the swaps)
and kept in checkpoints, so a resumed run trains on what the uninterrupted one did.

Departures from the authors' code (github.com/Word2VecT/Middo), and why:
- The loop runs inside one training run at epoch boundaries; the authors alternate full LLaMA-Factory trainings
  with offline filter and synthesis scripts.
- Quality: one forward pass scoring the log-odds of "Yes" to one fixed prompt (clarity, completeness and
  correctness together) instead of generating 0-10 scores for three aspects with two prompts each (vLLM): no
  generation, deterministic, and no parsing of free-form numbers.
- Diversity embeds the whole sample (the reference: the instruction alone); thresholds use the population
  sigma for all three signals (the reference's quality filter uses the sample sigma) and the complexity
  threshold uses m (the reference hard-codes 1 sigma there).
- Refinement: the default `drop` replaces a flagged sample with an unflagged reserve sample instead of having a
  strong LLM rewrite it (the reference always synthesizes with gpt-4o-mini through DataDreamer); `openai` sends
  each flagged sample to `selection.endpoint` (stdlib HTTP) with one instruction per diagnosis, and replaces it
  in place with the rewrite (the reference, for diversity, synthesizes a new sample from the sample and its
  neighbours instead). `downweight` (the issue's other default) keeps a flagged sample and scales its token
  losses by `weight` until a later loop clears it; the loss is still normalised by every trained token of the
  global batch, so the weighting does not depend on the micro-batch split.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive
from tuneforge.distributed import dist
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count, record

REWRITES = "middo_rewrites.jsonl"


@dataclass
class MiddoSelectionSpec(Spec):
    name: str = knob("middo", "Middo: each epoch the model diagnoses its training set and flagged samples are replaced")
    caps = Caps(reselects="at every epoch boundary (flagged samples are replaced)")
    fraction: float = knob(0.8, "share of the pool in the training set (the rest is the reserve replacements come "
                                "from; ignored when count > 0)")
    count: int = knob(0, "training set size (0: use fraction)")
    sigma: float = knob(1.0, "m: a sample is flagged beyond mean +- m sigma of a diagnostic")
    neighbours: int = knob(2, "k nearest training samples of the diversity diagnostic")
    refiner: str = knob("drop", "what happens to a flagged sample: drop (replaced by an unflagged reserve sample), "
                                "downweight (kept, its loss scaled by selection.weight) or openai (its rewrite by "
                                "selection.endpoint)")
    weight: float = knob(0.5, "refiner=downweight: the loss weight of a flagged training sample until a later loop "
                              "clears it (0: ignored, 1: no effect)")
    endpoint: Optional[str] = knob(None, "refiner=openai: base URL of an OpenAI-compatible server "
                                         "(POST <endpoint>/v1/chat/completions); off by default")
    api_model: str = knob("gpt-4o-mini", "refiner=openai: the model name sent to the endpoint")
    api_key_env: str = knob("OPENAI_API_KEY", "refiner=openai: environment variable holding the API key (never "
                                              "stored)")
    timeout_s: float = knob(60.0, "refiner=openai: seconds per request")
    batch_size: int = knob(8, "samples per diagnostic forward pass")

    def problems(self):
        out = [] if 0 < self.fraction <= 1 else [f"fraction={self.fraction} must be in (0, 1]"]
        out += one_of(self, "refiner", ("drop", "downweight", "openai"))
        out += [] if 0 <= self.weight <= 1 else [f"weight={self.weight} must be in [0, 1]"]
        if self.refiner == "openai" and not self.endpoint:
            out.append("refiner=openai needs selection.endpoint=<base URL of an OpenAI-compatible server>")
        return out + positive(self, "count", allow_zero=True) + positive(self, "sigma", "neighbours", "batch_size",
                                                                        "timeout_s")



@register("selection", "middo", config=MiddoSelectionSpec)
class Middo(Selector):
    needs_model = True

    def __init__(self, spec):
        super().__init__(spec)
        self.prev = None  # the pool's losses under the model of the previous loop

    def select(self, samples, ctx):
        from tuneforge.selection.middo.diagnose import loss_and_embedding

        n = len(samples)
        chosen = sorted(random.Random(ctx.seed).sample(range(n), keep_count(self.spec.fraction, self.spec.count, n)))
        self.prev = loss_and_embedding(ctx.model, samples, self.spec.batch_size, ctx.tokenizer.pad_token_id)[0]
        record(ctx.run_dir, 0, chosen, self.prev.tolist(), loss=self.prev.tolist())
        return chosen

    def on_train_start(self, ctx) -> None:
        import numpy as np

        saved = dist.broadcast_object(self._saved(ctx) if dist.is_main() else None)
        if saved["loss"] is not None and self.prev is None:
            self.prev = np.array(saved["loss"])
        if self.prev is None:
            from tuneforge.selection.middo.diagnose import loss_and_embedding

            self.prev = loss_and_embedding(ctx.model, ctx.data.pool, self.spec.batch_size, ctx.tokenizer.pad_token_id)[0]
        for row in saved["rewrites"]:  # a resumed run trains on the rewrites made before its checkpoint
            self._put(ctx, row)
        if saved["rewrites"]:
            ctx.data.use(ctx.data.chosen)

    def _saved(self, ctx) -> dict:
        """(rank 0) the previous losses of the last loop before this step, and the rewrites made before it."""
        out = {"loss": None, "rewrites": []}
        d = Path(ctx.run_dir) / "selection" if ctx.run_dir else None
        if d is None or not d.is_dir():
            return out
        steps = [int(p.stem.split("_")[1]) for p in d.glob("step_*.json")]
        before = [s for s in steps if s < ctx.step or s == 0]
        if before:
            out["loss"] = json.loads((d / f"step_{max(before)}.json").read_text()).get("loss")
        f = d / REWRITES
        if f.is_file():
            rows = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
            out["rewrites"] = [r for r in rows if r["step"] < ctx.step]
            f.write_text("".join(json.dumps(r) + "\n" for r in out["rewrites"]))  # later ones will be redone
        return out

    def on_step_start(self, ctx) -> None:
        spe = ctx.data.plan.steps_per_epoch
        if ctx.step > 0 and ctx.step % spe == 0:
            self.loop(ctx)

    def loop(self, ctx) -> None:
        """One diagnose-and-refine pass over the training set with the current model."""
        import numpy as np

        from tuneforge.selection.middo.diagnose import (
            flags,
            loss_and_embedding,
            neighbour_similarity,
            self_quality,
        )
        from tuneforge.selection.middo.refine import backfill

        s, pool, chosen = self.spec, ctx.data.pool, list(ctx.data.chosen)
        was_training = ctx.model.training
        ctx.model.eval()
        cur, emb = loss_and_embedding(ctx.model, pool, s.batch_size, ctx.tokenizer.pad_token_id)
        quality = self_quality(ctx.model, ctx.tokenizer, pool, s.batch_size)
        ctx.model.train(was_training)
        sim = neighbour_similarity(emb, chosen, s.neighbours)
        f = flags(self.prev, cur, sim, quality, chosen, s.sigma)
        bad = f["complexity"] | f["diversity"] | f["quality"]
        flagged = {i for i in chosen if bad[i]}
        rewritten = {}
        if s.refiner == "openai" and flagged:
            reasons = {i: next(k for k in ("quality", "complexity", "diversity") if f[k][i]) for i in flagged}
            rows = dist.broadcast_object(self._rewrite(ctx, sorted(flagged), reasons) if dist.is_main() else None)
            for row in rows:
                self._put(ctx, row)
                rewritten[row["index"]] = row["instruction"]
            flagged -= set(rewritten)
        if s.refiner == "downweight":  # the set stays; this loop's flags decide the weights
            new, swaps, weights = chosen, {}, {i: s.weight for i in sorted(flagged)}
            if weights != ctx.data.weights:
                ctx.data.use(new, ctx.step, weights)
        else:
            eligible = [i for i in range(len(pool)) if not bad[i]]
            new, swaps = backfill(chosen, flagged, eligible, ctx.data.plan.seed * 1_000_003 + ctx.step)
            weights = {}
            if swaps or rewritten:
                ctx.data.use(new, ctx.step)
        self.prev = cur
        record(ctx.run_dir, ctx.step, new, cur.tolist(), loss=cur.tolist(), similarity=sim.tolist(),
               quality=quality.tolist(), flagged={k: np.flatnonzero(v).tolist() for k, v in f.items()},
               swaps={str(i): j for i, j in swaps.items()}, rewritten=sorted(rewritten),
               weights={str(i): w for i, w in weights.items()})
        ctx.log(f"selection: step {ctx.step}: middo flagged {len(flagged) + len(rewritten)} of {len(chosen)} "
                f"(complexity {int(f['complexity'][chosen].sum())}, diversity {int(f['diversity'][chosen].sum())}, "
                f"quality {int(f['quality'][chosen].sum())}); replaced {len(swaps)}, rewrote {len(rewritten)}, "
                f"down-weighted {len(weights)}; "
                f"{len(new)} samples")

    def _rewrite(self, ctx, flagged: list[int], reasons: dict) -> list[dict]:
        """(rank 0) the endpoint's rewrites of the flagged samples, appended to <run_dir>/selection/REWRITES."""
        from tuneforge.selection.middo.refine import rewrite

        tok, rows = ctx.tokenizer, []
        for i in flagged:
            s = ctx.data.pool[i]
            prompt = tok.decode([t for t, y in zip(s.input_ids, s.labels) if y == -100], skip_special_tokens=True)
            answer = tok.decode([t for t, y in zip(s.input_ids, s.labels) if y != -100], skip_special_tokens=True)
            got = rewrite(self.spec, reasons[i], prompt.strip(), answer.strip())
            if got is not None and self._encode(ctx, *got) is not None:
                rows.append({"step": ctx.step, "index": i, "reason": reasons[i], "instruction": got[0],
                             "response": got[1]})
        if rows and ctx.run_dir:
            out = Path(ctx.run_dir) / "selection"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / REWRITES, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        return rows

    @staticmethod
    def _encode(ctx, instruction: str, response: str):
        from tuneforge.data.encode import encode
        from tuneforge.data.rows import Example, RowReport
        from tuneforge.errors import InputError

        ex = Example(messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
                     answer=response, source="middo:rewrite")
        try:
            got = encode([ex], ctx.tokenizer, ctx.data.data, RowReport())
        except InputError:
            return None
        return got[0] if got else None

    def _put(self, ctx, row: dict) -> None:
        sample = self._encode(ctx, row["instruction"], row["response"])
        if sample is not None:
            ctx.data.pool[row["index"]] = sample
