"""Model-shape checks before any weight loads (models.shapes + each method's `shape_problems`), on the two tiny
presets: tiny_llama (hidden 64, 4 heads, 2 KV heads of 16: k/v_proj 64 -> 32, MLP 128) and tiny_gqa (hidden 96,
3 heads, 1 KV head of 32: k/v_proj 96 -> 32, MLP 200). Expected values are computed by hand from those widths."""

from __future__ import annotations

import pytest

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.models.load import peek_config
from tuneforge.models.shapes import at_most_features, describe, divides_features


def check(*overrides):
    specs = build_specs(compose(list(overrides)))
    return registry.entry("peft", specs["peft"].name).builder.check_model(specs["peft"], peek_config(specs["model"]))


@pytest.fixture(scope="module")
def gqa():
    return describe(peek_config(build_specs(compose(["model=tiny_gqa"]))["model"]))


def test_describe_builds_the_shapes_without_weights(gqa):
    assert gqa.n_layers == 2 and next(gqa.model.parameters()).device.type == "meta"
    widths = {lin.name.rsplit(".", 1)[-1]: (lin.in_features, lin.out_features) for lin in gqa.linears(["all-linear"])}
    assert widths == {"q_proj": (96, 96), "k_proj": (96, 32), "v_proj": (96, 32), "o_proj": (96, 96),
                      "gate_proj": (96, 200), "up_proj": (96, 200), "down_proj": (200, 96)}
    assert len(gqa.linears(["all-linear"])) == 14


def test_rank_against_widths_names_the_narrowest_linear(gqa):
    linears = gqa.linears(["all-linear"])
    assert at_most_features("peft.r", 32, linears) == []
    assert at_most_features("peft.r", 33, linears) == [
        "peft.r=33 exceeds the 32 output features of model.layers.0.self_attn.k_proj: set peft.r <= 32"]
    assert at_most_features("peft.r", 100, gqa.linears(["down_proj"]), sides=("in",)) == []
    assert at_most_features("peft.r", 100, linears, sides=("in",)) == [
        "peft.r=100 exceeds the 96 input features of model.layers.0.self_attn.q_proj: set peft.r <= 96"]


def test_block_divisibility_suggests_the_largest_divisor_that_works(gqa):
    linears = gqa.linears(["all-linear"])  # gcd(96, 32, 200) = 8
    assert divides_features("peft.r", 8, linears) == []
    assert divides_features("peft.r", 16, linears) == [
        "peft.r=16 does not divide the 200 output features of model.layers.0.mlp.gate_proj (and 5 more linears): "
        "set peft.r to a divisor of 8, e.g. peft.r=8"]
    assert divides_features("peft.r", 32, gqa.linears(["k_proj", "v_proj"])) == []


def test_switchlora_default_rank_is_reported_with_a_value_that_works():
    assert check("model=tiny_llama", "peft=switchlora") == [
        "peft.r=128 exceeds the 32 output features of model.layers.0.self_attn.k_proj: set peft.r <= 32"]
    assert check("model=tiny_llama", "peft=switchlora", "peft.r=32") == []


def test_bone_blocks_and_miss_rank():
    assert check("model=tiny_llama", "peft=bone") == [  # gcd(64, 32, 128) = 32
        "peft.r=64 does not divide the 32 output features of model.layers.0.self_attn.k_proj (and 3 more linears): "
        "set peft.r to a divisor of 32, e.g. peft.r=32"]
    assert check("model=tiny_llama", "peft=bone", "peft.r=32") == []
    assert check("model=tiny_gqa", "peft=miss", "peft.r=96") == []


def test_every_problem_at_once():
    assert check("model=tiny_gqa", "peft=miss", "peft.r=128", "peft.mini_r=64") == [
        "peft.r=128 exceeds the 96 input features of model.layers.0.self_attn.q_proj: set peft.r <= 96",
        "peft.mini_r=64 does not divide the 96 output features of model.layers.0.self_attn.q_proj (and 13 more "
        "linears): set peft.mini_r to a divisor of 8, e.g. peft.mini_r=8"]


def test_targets_that_match_nothing_and_layers_out_of_range():
    assert check("model=tiny_gqa", "peft=switchlora", "peft.r=32", "peft.target_modules=[q_proj,qkv]") == []
    problems = check("model=tiny_gqa", "peft=lora", "peft.target_modules=[qkv]")
    assert problems == ["peft.target_modules=['qkv'] matches no linear layer inside the decoder layers (model.layers); "
                        "their linears: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj "
                        "(or use [all-linear])"]
    assert check("model=tiny_llama", "peft=freeze", "peft.layers=[0,2,-3]") == [
        "peft.layers=[0, 2, -3]: [2, -3] out of range for the model's 2 layers: use indices in [-2, 1] "
        "(negative counts from the end)"]
    assert check("model=tiny_gqa", "peft=freeze", "peft.layers=[]", "peft.modules=[lm_head.*]") == [
        "peft.modules=['lm_head.*'] matches no parameter of the model: use globs on its parameter names, e.g. "
        "model.embed_tokens.weight, model.norm.weight"]  # tied: the head's weight is the embeddings'
    assert check("model=tiny_gqa", "peft=freeze", "peft.layers=[]", "peft.modules=[model.norm.*]") == []
    assert check("model=tiny_llama", "peft=lisa", "peft.gamma=3") == [
        "peft.gamma=3 exceeds the model's 2 layers: set peft.gamma <= 2"]
    assert check("model=tiny_gqa", "peft=lst", "peft.reduction=16") == [  # gcd(96, 200, 32 / 2) = 8
        "peft.reduction=16 does not divide the model's intermediate_size=200: set peft.reduction to a divisor of 8, "
        "e.g. peft.reduction=8"]


def test_mtlora_task_layers_leave_a_trunk():
    tasks = ("model=tiny_llama", "peft=mtlora", "data.ops=[+,-]", "data.tasks=[add,sub]")
    assert check(*tasks, "peft.task_layers=1") == []
    assert check(*tasks, "peft.task_layers=2") == [
        "peft.task_layers=2 leaves no shared trunk in a model of 2 layers: set peft.task_layers <= 1 "
        "(or peft.mode=routed)"]
    assert check(*tasks, "peft.task_layers=2", "peft.mode=routed") == []  # routed has no trunk/task split


def test_corda_knowledge_window_fits_the_positions():
    kpm = ("model=tiny_llama", "peft=corda", "peft.r=4", "peft.mode=kpm",
           "peft.knowledge_data=pkg://tuneforge/data/examples/qa.jsonl")  # tiny_llama: 512 positions
    assert check(*kpm, "peft.knowledge_window=512") == []
    assert check(*kpm, "peft.knowledge_window=1024") == [
        "peft.knowledge_window=1024 exceeds the model's 512 positions: set peft.knowledge_window <= 512"]
    assert check(*kpm, "peft.knowledge_window=1024", "peft.knowledge_text=pairs") == []  # no windows
