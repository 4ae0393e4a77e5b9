"""selection=paser (PASER, arXiv 2502.12594): each defining property against a computation written here from the
paper's equations (not with PASER's own helpers), and the tiny twin's run."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from tuneforge.errors import InputError
from tuneforge.selection.paser.steps import ConceptGraph, allocate, concepts, spectral_nmf_clusters, token_jsd


def test_planted_clusters_are_recovered():
    """Four Gaussian blobs in 16 dimensions: spectral-NMF clustering finds them (adjusted Rand index > 0.9)."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (4, 16))
    x = np.concatenate([c + rng.normal(0, 1, (20, 16)) for c in centers])
    truth = np.repeat(np.arange(4), 20)
    perm = rng.permutation(len(x))
    assert adjusted_rand_score(truth[perm], spectral_nmf_clusters(x[perm], 4, seed=0)) > 0.9


def test_jsd_from_its_definition_and_zero_for_identical_models(tokenizer, tiny_model_factory):
    """JSD(P||Q) = 1/2 KL(P||M) + 1/2 KL(Q||M), M = (P+Q)/2, by hand on two toy distributions; and the per-sample
    divergence between a model and an exact copy of it is 0 for every sample."""
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.encode import encode
    from tuneforge.data.rows import Example, RowReport
    from tuneforge.selection.paser.run import score

    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    want = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    got = token_jsd(torch.tensor(p).log(), torch.tensor(q).log()).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert token_jsd(torch.tensor(q).log(), torch.tensor(p).log()).item() == pytest.approx(want, rel=1e-5)

    model = tiny_model_factory(0).eval()
    data = build_specs(compose(["model=tiny_llama"]))["data"]
    samples = encode([Example(text=t) for t in ("Tom has 3 apples.", "a b c d e f", "Paris is in France.")],
                     tokenizer, data, RowReport())
    emb, jsd = score(model, copy.deepcopy(model), samples, 2, tokenizer.pad_token_id)
    assert jsd == [0.0, 0.0, 0.0] and emb.shape == (3, 64)
    pruned = copy.deepcopy(model)
    pruned.model.layers[0].mlp.down_proj.weight.data.zero_()
    assert min(score(pruned, model, samples, 2, tokenizer.pad_token_id)[1]) > 0


def test_budget_sums_to_B_and_grows_with_degradation():
    """B_c ~ B * CDS_c / sum CDS: integers summing to B, each within 1 of its quota, never smaller for a cluster
    that degraded more, and a cluster's budget never falls when its own degradation rises."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        cds = rng.uniform(0, 1, rng.integers(2, 9)).tolist()
        b = int(rng.integers(1, 200))
        got = allocate(cds, b)
        assert sum(got) == b
        assert all(abs(g - b * c / sum(cds)) < 1 for g, c in zip(got, cds))
        by_cds = [got[i] for i in np.argsort(cds, kind="stable")]
        assert by_cds == sorted(by_cds)
        raised = list(cds)
        raised[0] *= 2
        assert allocate(raised, b)[0] >= got[0]
    assert allocate([0.0, 0.0, 0.0], 7) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])  # identical models: equal shares


def test_an_inconsistent_sample_is_rejected():
    """A sample relating two known concepts that no selected sample related is rejected; new concepts are fine.
    Through the whole selection: the conflicting sample is skipped although the budget has room for it."""
    from tuneforge.selection.paser.run import choose

    assert concepts("Tom has 12 red apples.") == {"tom", "red apples"}
    g = ConceptGraph()
    g.add(concepts("Tom has red apples."))
    g.add(concepts("Ana has books."))
    assert not g.consistent(concepts("Tom has books."))  # tom and books are known, never together
    assert g.consistent(concepts("Tom has red apples and pencils."))  # a known pair and a new concept

    texts = ["Tom has red apples.", "Ana has books.", "Tom has books.", "Leo has kites."]
    jsd = [0.5, 0.4, 0.3, 0.1]  # one cluster, equal lengths: ranked 0, 1, 2, 3
    chosen, report = choose(np.zeros(4, dtype=int), jsd, [6] * 4, texts, 4, 1, use_ccg=True)
    assert chosen == [0, 1, 3] and report["ccg_rejected"] == [2]
    assert choose(np.zeros(4, dtype=int), jsd, [6] * 4, texts, 4, 1, use_ccg=False)[0] == [0, 1, 2, 3]


def test_a_missing_original_or_an_unpruned_model_is_refused_before_loading():
    from tuneforge.config.compose import compose

    with pytest.raises(InputError, match=r"selection\.original=null"):
        compose(["recipe=quickstart_tiny", "selection=paser"])
    with pytest.raises(InputError, match="is the run's own model and the run prunes nothing"):
        compose(["recipe=paser_tiny", "prune=none"])


def test_a_model_pruned_beforehand_keeps_its_preset_name_and_is_accepted(tmp_path):
    """model.path=DIR (from `tuneforge prune`) keeps the preset's name: only the weights decide it is not the original."""
    from tuneforge.config.compose import compose

    (tmp_path / "config.json").write_text("{}")
    cfg = compose(["recipe=paser_tiny", "prune=none", "model.init=pretrained", f"model.path={tmp_path}"])
    assert cfg.model.name == cfg.selection.original == "tiny_llama" and cfg.model.path == str(tmp_path)
    compose(["recipe=paser_tiny", "prune=none", "model=tiny_gqa"])  # another random-init preset: other weights


def test_paser_tiny_selects_and_recovers(tmp_path):
    """The tiny twin: prune the run's Llama by half (its prune stage), select B = 12 of 24 samples, train 6 steps (pinned losses)."""
    from tests.conftest import train_here, train_losses
    from tests.golden import runs as golden

    run = train_here(*golden.ARGS["paser_tiny"], out=tmp_path / "run")
    golden.check("paser_tiny", train_losses(run))
    rec = json.loads((run / "selection/step_0.json").read_text())
    assert sum(rec["budget"].values()) == 12 and 0 < len(rec["chosen"]) <= 12
    assert min(rec["scores"]) > 0  # the pruned model diverges from its original on every sample
    assert not set(rec["chosen"]) & set(rec["ccg_rejected"])
    for c, b in rec["budget"].items():  # budgets follow each cluster's degradation
        assert all(b >= rec["budget"][d] for d in rec["cds"] if rec["cds"][d] < rec["cds"][c])
