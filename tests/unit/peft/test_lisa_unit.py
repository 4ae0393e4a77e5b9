"""LISA pieces that need no engine: sampling, parameter partition, policies, config checks, footprint."""

from __future__ import annotations

import collections

import pytest
import torch

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.models import footprint
from tuneforge.models.load import peek_config
from tuneforge.peft.base import MethodContext, count, trainable
from tuneforge.peft.lisa.sampler import sample


def test_sampling_is_a_function_of_seed_and_period():
    assert sample(3, 7, 30, 2) == sample(3, 7, 30, 2)
    draws = [tuple(sample(3, p, 30, 2)) for p in range(50)]
    assert len(set(draws)) > 40 and all(len(set(d)) == 2 for d in draws)
    hits = collections.Counter(i for d in [sample(0, p, 6, 1) for p in range(3000)] for i in d)
    assert min(hits.values()) > 400 and max(hits.values()) < 600  # uniform: 500 each


def test_weighted_sampling_follows_weights():
    w = [1, 1, 1, 1, 50, 1]
    hits = collections.Counter(i for p in range(400) for i in sample(0, p, 6, 1, w))
    assert hits[4] > 0.85 * 400
    pairs = [sample(0, p, 6, 2, w) for p in range(200)]
    assert sum(4 in s for s in pairs) > 0.95 * 200 and all(len(set(s)) == 2 for s in pairs)


def lisa(*overrides):
    return registry.build("peft", build_specs(compose(["peft=lisa", *overrides]))["peft"])


@pytest.fixture
def deep_model(tiny_model_factory):
    return tiny_model_factory(0, "model.arch.num_hidden_layers=6")


def test_partition_and_policies(deep_model):
    m = lisa("peft.gamma=2")
    model = m.apply(deep_model, MethodContext(seed=1))
    names = {n for n, _ in trainable(model)}
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n}
    assert layers == set(m.active) and len(layers) == 2
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names  # tied head = embeddings
    assert [len(g["params"]) for g in m.param_groups(model)] == [2, 9, 9]  # always, then one group per layer


def test_frozen_embeddings_head_norm(tiny_model_factory):
    m = lisa("peft.embed=freeze", "peft.head=freeze", "peft.norm=freeze", "peft.gamma=1")
    model = m.apply(tiny_model_factory(0, "model.arch.num_hidden_layers=6"), MethodContext())
    assert all(".layers." in n for n, _ in trainable(model))


def test_tied_embeddings_conflict_is_a_config_error(deep_model):
    with pytest.raises(InputError, match="ties its input embeddings and LM head"):
        lisa("peft.embed=train", "peft.head=freeze").apply(deep_model, MethodContext())
    spec = build_specs(compose(["model=tiny_llama", "peft=lisa", "peft.head=freeze"]))
    problems = registry.entry("peft", "lisa").builder.check_model(spec["peft"], peek_config(spec["model"]))
    assert len(problems) == 1 and "tie" in problems[0]
    untied = build_specs(compose(["model=llama2_7b", "peft=lisa", "peft.head=freeze"]))
    assert registry.entry("peft", "lisa").builder.check_model(untied["peft"], peek_config(untied["model"])) == []


def test_weighted_importance_is_the_layer_weight_norm(deep_model):
    m = lisa("peft.sampling=weighted")
    model = m.apply(deep_model, MethodContext())
    with torch.no_grad():
        for p in model.model.layers[3].parameters():
            p.mul_(10)
    w = m.layer_weights()
    assert max(range(6), key=lambda i: w[i]) == 3 and w[3] > 5 * max(w[i] for i in range(6) if i != 3)


def test_footprint_matches_real_parameter_counts(tiny_model_factory):
    specs = build_specs(compose(["model=tiny_llama", "model.arch.num_hidden_layers=6", "peft=lisa", "peft.gamma=2"]))
    parts = footprint.parts(peek_config(specs["model"]))
    model = tiny_model_factory(0, "model.arch.num_hidden_layers=6")
    assert parts.total == count(model)[1]
    lisa_model = registry.build("peft", specs["peft"]).apply(model, MethodContext())
    assert specs["peft"].trainable_estimate(parts)[1] == count(lisa_model)[0]
    lora_spec = build_specs(compose(["model=tiny_llama", "model.arch.num_hidden_layers=6", "peft=lora", "peft.r=4"]))["peft"]
    lora_model = registry.build("peft", lora_spec).apply(tiny_model_factory(0, "model.arch.num_hidden_layers=6"),
                                                          MethodContext())
    assert lora_spec.trainable_estimate(parts)[1] == count(lora_model)[0]
    baselines = [registry.entry("peft", n).config() for n in ("full", "lora")]
    rows = footprint.table(peek_config(specs["model"]), specs, world=2, baselines=baselines)
    assert [r["chosen"] for r in rows] == [False, False, True]


def test_lisa_cross_axis_checks():
    with pytest.raises(InputError, match="adamw8bit needs zero=zero0"):
        compose(["peft=lisa", "optim=adamw8bit", "zero=zero2"])
    with pytest.raises(InputError, match="NVMe"):
        compose(["peft=lisa", "zero=zero3_nvme", "zero.nvme_path=/tmp"])
