"""`selection=preselect`: PreSelect (Shum et al., "Predictive Data Selection: The Data That Predicts Is the Data
That Teaches", arXiv 2503.00808; reference code github.com/hkust-nlp/PreSelect, data_processing/bpc/ and
data_processing/fasttext/train_fasttext.py).

A document is worth training on when the losses of several models on it predict their benchmark order. With N
scoring models of benchmark scores b_1..b_N and losses C_1(d)..C_N(d) on document d, the predictive strength is
the number of concordant model pairs (the paper's S(d) before dividing by N(N-1)/2, which changes no order):

    S(d) = sum_{i<j} 1[(b_i > b_j and C_i(d) < C_j(d)) or (b_i < b_j and C_i(d) > C_j(d))]

(pairs of equal benchmark scores count for neither side). The probed documents are labelled: positive where every
pair agrees (S = N(N-1)/2), negative as many documents of the lowest S; a fastText classifier trained on them
scores every document of the pool, and the top `fraction` by P(positive) is kept. Scoring with N models is the
expensive part, so only `probe` documents are scored (a seeded sample); the classifier filters the whole pool.

Static selector: before the tuned model is built, on rank 0, each scoring model is loaded in turn (fp32, on the
GPU when there is one), scores the probed documents and is freed. The scores go to run_dir/selection/step_0.json
(classifier score of every document, each probed document's strength and each model's losses).

Departures from the reference code:
- C_i(d) is the summed token loss of the whole document (the reference sums the loss over sliding 1900-token
  windows of stride 512 for bits per character). Dividing by the document's character count, as bits per
  character does, changes no model's order on a document, so the strength is the same; documents here are
  training samples, short enough to be scored in one window.
- A document is a training sample's text as the tuned model's tokenizer decodes it (special tokens dropped), so
  scoring models with other tokenizers read the same text.
- `label_share > 0` labels the top and bottom share instead, for small pools where few documents are perfectly
  concordant (the reference's rule is the default).
- fastText trains on one thread with a fixed seed, in a fresh interpreter (its results otherwise depend on the
  process's heap; see JOB), so a selection is deterministic. epoch/lr/wordNgrams are the reference's, `dim`/`bucket`
  fastText's defaults. The classifier is not kept (at the default size it is ~0.8 GB); its scores are.
"""

from __future__ import annotations

import gc
import random
import tempfile
from pathlib import Path

from tuneforge.errors import InputError, RunError
from tuneforge.registry import register
from tuneforge.selection import Selector, keep_count, record
from tuneforge.selection.preselect.spec import PreSelectSpec, benchmark_scores, is_run_dir

__all__ = ["PreSelect", "PreSelectSpec", "classify", "strength"]


def strength(losses: list[float], bench: list[float]) -> int:
    """Concordant model pairs on one document: pairs whose loss order agrees with their benchmark order."""
    n = len(bench)
    return sum(1 for i in range(n) for j in range(i + 1, n)
               if (bench[i] - bench[j]) * (losses[j] - losses[i]) > 0)


def labels(strengths: list[int], n_models: int, share: float) -> tuple[list[int], list[int]]:
    """(positive, negative) positions in `strengths`: the paper's rule (share 0) or the top/bottom share."""
    order = sorted(range(len(strengths)), key=lambda i: (-strengths[i], i))
    if share > 0:
        k = max(1, round(share * len(order)))
        pos = order[:k]
    else:
        pos = [i for i in order if strengths[i] == n_models * (n_models - 1) // 2]
    neg = [i for i in reversed(order) if i not in set(pos)][:len(pos)]
    return pos, neg


def _line(text: str) -> str:
    return " ".join(text.split())


# fastText's trainer gives different bits in a long-lived process (measured: the 6th identical training in one
# process differed, as its vectorised loops meet other heap alignments), the same bits in a fresh interpreter.
JOB = """
import json, sys
import fasttext
work = sys.argv[1]
args = json.load(open(work + "/args.json"))
model = fasttext.train_supervised(input=work + "/train.txt", thread=1, verbose=0, **args)
texts = open(work + "/score.txt").read().splitlines()
labels, probs = model.predict(texts, k=-1)
json.dump([float(dict(zip(g, p)).get("__label__1", 0.0)) for g, p in zip(labels, probs)], open(work + "/scores.json", "w"))
"""


def classifier_scores(pos: list[str], neg: list[str], texts: list[str], spec: PreSelectSpec, seed: int) -> list[float]:
    """Train fastText on `pos` (`__label__1`, predictive) vs `neg` (`__label__0`) and return P(predictive) of
    each of `texts`: one thread, a fixed seed, in a fresh interpreter, so the same inputs give the same bits."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("fasttext") is None:
        raise RunError("selection=preselect needs fastText: pip install 'tuneforge[selection]' (fasttext-numpy2)")
    with tempfile.TemporaryDirectory(prefix="preselect-") as tmp:
        work = Path(tmp)
        (work / "train.txt").write_text("".join(f"__label__{y} {_line(t)}\n" for y, docs in ((1, pos), (0, neg))
                                                for t in docs))
        (work / "score.txt").write_text("".join(f"{_line(t)}\n" for t in texts))
        (work / "args.json").write_text(json.dumps(dict(epoch=spec.epoch, lr=spec.lr, wordNgrams=spec.word_ngrams,
                                                        dim=spec.dim, bucket=spec.bucket, seed=seed)))
        proc = subprocess.run([sys.executable, "-c", JOB, str(work)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunError(f"selection=preselect: fastText failed: {proc.stderr.strip()[-2000:]}")
        return json.loads((work / "scores.json").read_text())


def model_spec(ref: str, seed: int):
    """(ModelSpec, seed) of one scoring model: a path, a run directory's export, or <preset>@<seed>."""
    from omegaconf import OmegaConf

    from tuneforge.config.compose import config_dirs, options
    from tuneforge.config.schema import ModelSpec

    preset, _, preset_seed = ref.partition("@")
    if preset in options("model"):
        fields = OmegaConf.to_container(OmegaConf.load(config_dirs()[0] / "model" / f"{preset}.yaml"))
        return ModelSpec(**fields), int(preset_seed or seed)
    if is_run_dir(ref):
        exports = sorted(p.parent for p in (Path(ref) / "export").rglob("config.json") if p.parent.name != "adapter")
        if len(exports) != 1:
            raise InputError([f"selection.models: run directory {ref} has {len(exports)} exported models "
                              f"({[str(p) for p in exports]}): run `tuneforge export run_dir={ref}` first, or name "
                              "the exported model directory itself"])
        ref = str(exports[0])
    return ModelSpec(name=Path(ref).name, path=ref), seed


def document_losses(ref: str, texts: list[str], seed: int, batch_size: int, device: str, toks: dict) -> list[float]:
    """Summed token loss (nats) of each text under one scoring model, loaded and freed here (`toks`: the
    tokenizers loaded so far, by source)."""
    import torch
    import torch.nn.functional as F

    from tuneforge.models.load import load_model, load_tokenizer, preflight

    spec, seed = model_spec(ref, seed)
    if problems := preflight(spec):
        raise InputError([f"selection.models: {p}" for p in problems])
    source = spec.tokenizer or spec.path
    tok = toks[source] = toks.get(source) or load_tokenizer(spec)
    tok.padding_side = "right"  # the loss mask below assumes right padding
    model = load_model(spec, seed=seed, vocab_size=len(tok)).to(device).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=True)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
            out += nll.sum(1).tolist()
    del model
    gc.collect()
    return out


def classify(texts: list[str], probed: list[int], losses: list[list[float]], bench: list[float], spec: PreSelectSpec,
             seed: int) -> tuple[list[float], list[int], list[int], list[int]]:
    """Label the probed documents by strength (losses[m][k]: model m on document probed[k]), train the classifier,
    score every text. Returns (scores, strengths, positive ids, negative ids)."""
    strengths = [strength([m[k] for m in losses], bench) for k in range(len(probed))]
    pos, neg = labels(strengths, len(bench), spec.label_share)
    if not pos or not neg:
        raise RunError(f"selection=preselect: {len(pos)} of {len(probed)} probed documents are concordant on every "
                       f"model pair ({len(neg)} negatives): set selection.label_share (e.g. 0.1) to label the top "
                       "and bottom share instead, or probe more documents (selection.probe)")
    pos, neg = [probed[i] for i in pos], [probed[i] for i in neg]
    return classifier_scores([texts[i] for i in pos], [texts[i] for i in neg], texts, spec, seed), strengths, pos, neg


@register("selection", "preselect", config=PreSelectSpec)
class PreSelect(Selector):
    def select(self, samples, ctx):
        import torch

        s = self.spec
        bench = benchmark_scores(s)
        texts = [ctx.tokenizer.decode(x.input_ids, skip_special_tokens=True) for x in samples]
        n = len(texts)
        probed = sorted(random.Random(ctx.seed).sample(range(n), min(s.probe, n))) if s.probe else list(range(n))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        toks = {}
        losses = [document_losses(ref, [texts[i] for i in probed], ctx.seed, s.batch_size, device, toks)
                  for ref in s.models]
        scores, strengths, pos, neg = classify(texts, probed, losses, bench, s, ctx.seed)
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        chosen = sorted(order[:keep_count(s.fraction, s.count, n)])
        record(ctx.run_dir, 0, chosen, scores, probed=probed, strength=strengths, models=list(s.models),
               benchmark=bench, losses=losses, positive=pos, negative=neg)
        return chosen
