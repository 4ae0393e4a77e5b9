"""One resolver answers "which linears does this method adapt" (models.targets), on real and meta-device models."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tuneforge.models.targets import replace, target_linears, target_names

CONFIG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1)
PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"]


def test_all_linear_is_every_linear_of_the_layers_never_the_head():
    model = LlamaForCausalLM(CONFIG)
    names = target_names(model, ["all-linear"])
    assert names == [f"model.layers.{i}.{p}" for i in range(2) for p in PROJ]
    assert "lm_head" not in " ".join(names)


def test_all_linear_is_what_hf_peft_adapts_on_a_llama():
    model = LlamaForCausalLM(CONFIG)
    ours = set(target_names(model, ["all-linear"]))
    peft_model = get_peft_model(LlamaForCausalLM(CONFIG), LoraConfig(r=2, target_modules="all-linear"))
    theirs = {n.removeprefix("base_model.model.").removesuffix(".lora_A") for n, _ in peft_model.named_modules()
              if n.endswith(".lora_A")}
    assert ours == theirs


def test_names_match_like_peft_leaf_or_dotted_suffix():
    model = LlamaForCausalLM(CONFIG)
    assert target_names(model, ["q_proj"]) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert target_names(model, ["1.mlp.up_proj", "v_proj"]) == [
        "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.up_proj"]
    with pytest.raises(ValueError, match=r"matches no linear layer.*their linears: down_proj, gate_proj, k_proj"):
        target_linears(model, ["qproj"])
    with pytest.raises(ValueError, match="matches no linear"):
        target_linears(model, ["lm_head"])  # the head is never a target


def test_meta_model_resolves_the_same_linears_with_their_shapes():
    real = target_linears(LlamaForCausalLM(CONFIG), ["all-linear"])
    with torch.device("meta"):
        meta = target_linears(AutoModelForCausalLM.from_config(CONFIG), ["all-linear"])
    assert [(n, m.in_features, m.out_features) for n, m in real] == [(n, m.in_features, m.out_features) for n, m in meta]
    assert dict(meta)["model.layers.0.self_attn.k_proj"].out_features == 8  # 1 KV head of 8


def test_replace_puts_a_module_at_the_resolved_name():
    model = LlamaForCausalLM(CONFIG)
    name, _ = target_linears(model, ["o_proj"])[1]
    replace(model, name, torch.nn.Identity())
    assert isinstance(model.model.layers[1].self_attn.o_proj, torch.nn.Identity)
