"""selection=preselect (PreSelect, arXiv 2503.00808): the predictive strength of a document is the number of scoring
model pairs whose loss order on it agrees with their benchmark order; a fastText classifier trained on the most
vs least predictive documents scores the pool."""

from __future__ import annotations

import json
import random
from itertools import combinations

import pytest

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.selection import SelectionContext
from tuneforge.selection.preselect import PreSelectSpec, classify, strength

SMALL = dict(dim=16, bucket=10_000, epoch=25)  # a fastText small enough for a test (the defaults are the paper's)


def concordant(losses, bench):
    """Written from the definition: a pair counts when the better-benchmark model has the lower loss."""
    count = 0
    for i, j in combinations(range(len(bench)), 2):
        if bench[i] == bench[j]:
            continue
        better, worse = (i, j) if bench[i] > bench[j] else (j, i)
        count += losses[better] < losses[worse]
    return count


def test_strength_counts_the_concordant_pairs():
    bench = [50.0, 60.0, 70.0, 80.0]
    assert strength([4.0, 3.0, 2.0, 1.0], bench) == 6  # every pair agrees
    assert strength([1.0, 2.0, 3.0, 4.0], bench) == 0  # every pair inverted
    assert strength([2.0, 1.0, 3.0, 0.5], bench) == 4  # (0,1) (0,3) (1,3) (2,3) agree; (0,2) (1,2) do not
    assert strength([2.0, 2.0, 1.0, 1.0], [50.0, 50.0, 70.0, 70.0]) == 4  # tied losses / tied benchmarks count 0
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(3, 6)
        bench = [float(rng.randint(0, 4)) for _ in range(n)]
        losses = [float(rng.randint(0, 4)) for _ in range(n)]
        assert strength(losses, bench) == concordant(losses, bench), (losses, bench)


def auc(pos: list[float], neg: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney)."""
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_classifier_separates_planted_predictive_documents():
    """Type-A documents (one vocabulary) have losses in the models' benchmark order, type-B documents (another
    vocabulary) the inverse order. Trained on labelled probed documents, the classifier ranks unseen type-A
    documents above unseen type-B ones (AUC > 0.9)."""
    rng = random.Random(0)
    vocab = {t: [f"{t}{i}" for i in range(30)] for t in "ab"}
    shared = [f"w{i}" for i in range(30)]

    def doc(t):
        return " ".join(rng.choice(vocab[t] + shared) for _ in range(12))

    kinds = ["a"] * 60 + ["b"] * 60
    probed = [doc(t) for t in kinds]
    unseen = [doc("a") for _ in range(40)] + [doc("b") for _ in range(40)]
    bench = [40.0, 50.0, 60.0]
    losses = [[5 + (-0.1 if t == "a" else 0.1) * m + rng.gauss(0, 0.03) for t in kinds] for m in range(3)]
    spec = PreSelectSpec(models=["m0", "m1", "m2"], ranking=bench, **SMALL)
    scores, strengths, pos, neg = classify(probed + unseen, list(range(120)), losses, bench, spec, seed=0)
    assert strengths == [concordant([m[k] for m in losses], bench) for k in range(120)]
    assert pos == [k for k in range(120) if strengths[k] == 3]  # the paper's labels: every pair concordant ...
    assert len(neg) == len(pos) and max(strengths[k] for k in neg) <= min(strengths[k] for k in range(120)
                                                                          if k not in neg)  # ... vs the lowest
    assert auc(scores[120:160], scores[160:]) > 0.9
    again = classify(probed + unseen, list(range(120)), losses, bench, spec, seed=0)[0]
    assert again == scores  # one thread, fixed seed: deterministic


def test_needs_three_models_and_a_ranking_for_each():
    """Fewer than 3 scoring models, or a ranking that does not cover every model, fail at compose time."""
    with pytest.raises(InputError) as e:
        compose(["selection=preselect", "selection.models=[a,b]", "selection.ranking=[1,2]"])
    assert "needs at least 3" in e.value.render()
    with pytest.raises(InputError) as e:
        compose(["selection=preselect", "selection.models=[a,b,c]", "selection.ranking=[1,2]"])
    assert "2 scores for 3 models" in e.value.render()
    with pytest.raises(InputError) as e:
        compose(["selection=preselect", "selection.models=[a,b,c]"])
    assert "run `tuneforge eval" in e.value.render() and "'a', 'b', 'c'" in e.value.render()


def test_ranking_is_read_from_eval_results(tmp_path):
    """A run directory ranks by its `tuneforge eval` result (eval.json), else its summary's last eval; a loss
    metric ranks lower as better."""
    from tuneforge.selection.preselect.spec import benchmark_scores

    runs = []
    for k, (em, loss) in enumerate([(0.2, 3.0), (0.5, 2.0), (0.4, 2.5)]):
        run = tmp_path / f"r{k}"
        run.mkdir()
        (run / "config.yaml").write_text("{}")
        (run / "summary.json").write_text(json.dumps({"eval": {"exact_match": 0.0, "eval_loss": loss}}))
        if k != 1:  # r1: no eval.json, its summary counts
            (run / "eval.json").write_text(json.dumps({"exact_match": em, "eval_loss": loss}))
        else:
            (run / "summary.json").write_text(json.dumps({"eval": {"exact_match": em, "eval_loss": loss}}))
        runs.append(str(run))
    assert benchmark_scores(PreSelectSpec(models=runs)) == [0.2, 0.5, 0.4]
    assert benchmark_scores(PreSelectSpec(models=runs, metric="eval_loss")) == [-3.0, -2.0, -2.5]


def test_selector_scores_with_each_model_and_records(tmp_path, tokenizer, tiny_model_factory):
    """End to end on three tiny random models: each model's document loss is the summed token loss Hugging Face
    computes, the recorded strengths are the concordance of those losses, and the top fraction by classifier
    score is kept (recorded in run_dir/selection/step_0.json)."""
    import torch

    from tuneforge.data.encode import encode
    from tuneforge.data.rows import Example, RowReport

    data = build_specs(compose(["model=tiny_llama"]))["data"]
    rng = random.Random(1)
    words = ["apple", "river", "stone", "cloud", "seven", "green", "table", "music", "light", "paper"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(24)]
    samples = encode([Example(text=t) for t in texts], tokenizer, data, RowReport())
    sel = build_specs(compose(["selection=preselect", "selection.models=[tiny_llama@1,tiny_llama@2,tiny_llama@3]",
                               "selection.ranking=[1,3,2]", "selection.fraction=0.25", "selection.label_share=0.25",
                               *[f"selection.{k}={v}" for k, v in SMALL.items()]]))["selection"]
    chosen = registry.build("selection", sel).select(samples, SelectionContext(0, tokenizer, tmp_path))
    rec = json.loads((tmp_path / "selection/step_0.json").read_text())
    assert rec["probed"] == list(range(24)) and len(chosen) == 6 == len(rec["chosen"])
    decoded = [tokenizer.decode(s.input_ids, skip_special_tokens=True) for s in samples]
    model = tiny_model_factory(2).eval()
    with torch.no_grad():
        for k in (0, 5):
            ids = tokenizer(decoded[k], return_tensors="pt")["input_ids"]
            want = model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            assert rec["losses"][1][k] == pytest.approx(want, rel=1e-5)
    assert rec["strength"] == [concordant([m[k] for m in rec["losses"]], [1, 3, 2]) for k in range(24)]
    top = sorted(range(24), key=lambda i: (-rec["scores"][i], i))[:6]
    assert chosen == sorted(top)
