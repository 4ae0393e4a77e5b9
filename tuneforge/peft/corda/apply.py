"""`peft=corda`: CorDA, context-oriented decomposition adaptation (Yang et al., 2024, arXiv 2406.05223), through
Hugging Face PEFT (`init_lora_weights="corda"`, `peft.tuners.lora.corda.preprocess_corda`).

Per target linear W (d_out x d_in), with C = X^T X the covariance of its inputs over calibration samples
(Sec. 3.1): W C = U S V^T (SVD), and W = (W C) C^{-1} = U S (C^{-1} V)^T = sum_i s_i u_i v_i^T C^{-1}.
The components are split by rank r (Sec. 3.2):
- IPM, instruction-previewed (`peft.mode=ipm`): C from the task's own training samples; the adapter is built
  from the TOP-r components, B = U_r sqrt(S_r), A = sqrt(S_r) (C^{-1} V_r)^T (Eq. 5), and learns the task
  context; the residual W - B A is frozen.
- KPM, knowledge-preserved (`peft.mode=kpm`): C from a separate knowledge dataset (`peft.knowledge_data`, e.g.
  TriviaQA); the adapter takes the BOTTOM-r components (least used by that knowledge), the frozen residual keeps
  the top ones, so fine-tuning disturbs the knowledge least.
(PEFT folds alpha / r into S so that residual + (alpha / r) B A == W exactly at init.)

The KPM calibration text follows the reference code (github.com/iboing/CorDA, `cordalib/datautils.py`,
`get_calib_data` for "nqopen" / "traivia_qa"), with `peft.knowledge_text=questions` (default):
- follows: only the questions (no answers) of the knowledge rows, in file order, joined by a blank line into one
  text, then windows of `knowledge_window` tokens (the reference's seqlen, 2048), `n_samples` of them (its
  calib_loader_size, 256); each window is one calibration sample (one X^T X / max|X|^2 term of C, PEFT's hook);
- follows: a window starts with the tokenizer's BOS token when the tokenizer adds one itself (Llama's does, as
  the reference tokenizes each window);
- departs: the reference picks each window at a uniformly random *character* offset (with replacement, so windows
  may overlap or repeat, and may start mid-word); here the token stream is cut into consecutive disjoint windows
  and a seeded random subset of `n_samples` is kept (all of them if fewer): no token is counted twice, every
  window is full length, and the set is reproducible from the seed;
- departs: a knowledge text shorter than one window gives one shorter window (the reference fails there);
- "question" is the user turns of a row (qa: its question field; alpaca: instruction + input; chat: every user
  turn), or a text row's whole text.
`peft.knowledge_text=pairs` keeps the earlier behaviour: each row (question and answer rendered with the chat
template) is one calibration sample.

PEFT's hooks accumulate each layer's X^T X in fp32 sample by sample: memory is bounded by the per-layer
d_in x d_in matrices, not by the sample count. tuneforge streams the calibration samples one at a time
(batch 1, no padding: PEFT's hook expects one sequence) through the decoder, reports progress on the run's
console, and caches the cropped decomposition in <run_dir>/corda/: a resume, `tuneforge eval` and
`tuneforge export` reuse it and rebuild the same residual and adapter bit for bit. With several ranks, rank 0
calibrates and writes the cache, the others load it (raise `trainer.dist_timeout_s` for very long calibrations).
`export/adapter` is converted to a plain LoRA adapter over the original base model (PEFT's
`path_initial_model_for_weight_conversion`, rank 2r), from the initial adapter saved in <run_dir>/corda/.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tuneforge import registry
from tuneforge.distributed import dist
from tuneforge.errors import InputError
from tuneforge.models.layers import unwrap
from tuneforge.models.shapes import at_most_features, targets
from tuneforge.peft.corda.spec import CordaSpec
from tuneforge.peft.lora.apply import Lora
from tuneforge.registry import register


@register("peft", "corda", config=CordaSpec)
class Corda(Lora):
    @staticmethod
    def shape_problems(spec, shape):
        """The adapter takes r components of the decomposition of W C: there are min(in, out)."""
        linears, out = targets(shape, spec.target_modules)
        limit = getattr(shape.config, "max_position_embeddings", None)
        if spec.packs_questions and limit and spec.knowledge_window > limit:
            out.append(f"peft.knowledge_window={spec.knowledge_window} exceeds the model's {limit} positions: set "
                       f"peft.knowledge_window <= {limit}")
        return out + at_most_features("peft.r", spec.r, linears)

    def apply(self, model, ctx):
        from peft import get_peft_model
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        s = self.spec
        folder = Path(ctx.run_dir) / "corda" if ctx.run_dir is not None else None
        cache = folder / f"{s.mode}_r{s.r}_{self.fingerprint(ctx)}.pt" if folder else None
        self.initial = folder / "initial_adapter" if folder else None
        config = self.lora_config(model, init_lora_weights="corda", corda_config=CordaConfig(
            corda_method=s.mode, cache_file=str(cache) if cache else None, verbose=False))
        log = ctx.log or (lambda *_: None)
        # rank 0's view, taken before it writes the cache: every rank then takes the same branch (a rank that saw
        # the file rank 0 had just written would skip the barrier rank 0 waits at)
        if cache is not None and dist.broadcast_object(cache.exists()):
            log(f"corda: decomposition from cache {cache}")
            preprocess_corda(model, config)
        else:
            if dist.is_main() or cache is None:
                preprocess_corda(model, config, run_model=self.calibration(model, ctx, log))
            dist.barrier()
            if not dist.is_main() and cache is not None:
                preprocess_corda(model, config)  # rank 0's decomposition, exactly
        peft_model = get_peft_model(model, config)
        if self.initial is not None and dist.is_main() and not self.initial.exists():
            peft_model.save_pretrained(str(self.initial))
        return peft_model

    def fingerprint(self, ctx) -> str:
        """What the decomposition depends on: a cache built for other settings is never reused."""
        key = {"peft": asdict(self.spec), "model": asdict(ctx.specs["model"]) if "model" in ctx.specs else None,
               "data": asdict(ctx.specs["data"]) if "data" in ctx.specs and self.spec.mode == "ipm" else None}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def samples(self, ctx, log=None) -> list[list[int]]:
        """The token ids of each calibration sample (at most n_samples)."""
        s = self.spec
        if s.mode == "kpm":
            examples, spec, report = self.knowledge(ctx)
            if s.packs_questions:
                windows = question_windows(examples, ctx.tokenizer, s.knowledge_window)
                if len(windows) > s.n_samples:
                    keep = sorted(random.Random(ctx.seed).sample(range(len(windows)), s.n_samples))
                    windows = [windows[i] for i in keep]
                (log or (lambda *_: None))(f"corda: knowledge covariance from {len(windows)} windows of up to "
                                           f"{s.knowledge_window} tokens of the questions of {len(examples)} rows")
                return windows
            from tuneforge.data.encode import encode

            pool = [x.input_ids for x in encode(examples, ctx.tokenizer, spec, report)]
        else:
            pool = [x.input_ids for x in ctx.train_samples]
        if not pool:
            raise InputError([f"peft=corda: no calibration samples and no cached decomposition in "
                              f"{ctx.run_dir}/corda: train the run first (eval/export reuse its cache)"])
        random.Random(ctx.seed).shuffle(pool)
        return pool[: s.n_samples]

    def knowledge(self, ctx):
        """(examples, data spec, row report) of `peft.knowledge_data`, read with its data format."""
        s = self.spec
        spec = registry.entry("data", s.knowledge_format).config(
            name=s.knowledge_format, path=s.knowledge_data, eval_split=0, max_length=ctx.specs["data"].max_length)
        loaded = registry.build("data", spec).load(ctx.seed)
        return loaded.train, spec, loaded.report

    def calibration(self, model, ctx, log):
        samples = self.samples(ctx, log)
        decoder = unwrap(model).get_decoder()
        device = next(model.parameters()).device
        every = max(1, len(samples) // 10)

        def run():
            t0 = time.time()
            log(f"corda: calibrating on {len(samples)} samples ({self.spec.mode}), covariance per target layer")
            for i, sample in enumerate(samples, 1):
                decoder(input_ids=torch.tensor([sample], device=device), use_cache=False)
                if i % every == 0 or i == len(samples):
                    log(f"corda: calibration {i}/{len(samples)} samples ({time.time() - t0:.1f}s)")

        return run

    def save_adapter(self, model, path):
        if self.initial is None or not self.initial.exists():
            return False
        model.save_pretrained(str(path), path_initial_model_for_weight_conversion=str(self.initial))
        return True


def question_text(example) -> str:
    """The question of a knowledge row: its user turns, or a text row's text."""
    if example.messages is not None:
        return "\n".join(m["content"] for m in example.messages if m["role"] == "user")
    return example.text


def question_windows(examples, tokenizer, window: int) -> list[list[int]]:
    """The questions joined by blank lines, tokenized once and cut into consecutive windows of `window` tokens
    (BOS first when the tokenizer adds one itself); a text shorter than one window is one shorter window."""
    ids = tokenizer("\n\n".join(question_text(ex) for ex in examples), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []
    step = window - len(head)
    return [head + ids[i:i + step] for i in range(0, len(ids) - step + 1, step)] or [head + ids]
