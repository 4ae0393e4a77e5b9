"""Decoder-layer discovery picks the text decoder's layers, never a vision tower's."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from tuneforge.models.layers import decoder_layers, layer_of_param


def tiny_llama(n=3):
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=n,
                                        num_attention_heads=2, num_key_value_heads=1))


def test_llama_layers_and_ownership():
    model = tiny_llama(3)
    name, layers = decoder_layers(model)
    assert name == "model.layers" and len(layers) == 3
    owner = layer_of_param(layers)
    assert owner[id(model.model.layers[2].mlp.up_proj.weight)] == 2
    assert id(model.model.embed_tokens.weight) not in owner and id(model.model.norm.weight) not in owner


def test_vision_tower_with_same_depth_is_never_chosen():
    vision = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
              "num_attention_heads": 2, "image_size": 16, "patch_size": 8, "projection_dim": 16}
    text = {"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1}
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=5))
    lists = [n for n, m in model.named_modules() if type(m).__name__ == "ModuleList" and len(m) == 3]
    assert len(lists) >= 2, lists  # the trap: two lists of equal length
    name, layers = decoder_layers(model)
    assert "vision" not in name and type(layers[0]).__name__ == "LlamaDecoderLayer"


def test_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(2), LoraConfig(r=2, target_modules=["q_proj"]))
    name, layers = decoder_layers(model)
    assert len(layers) == 2 and name.endswith("layers")


def test_ambiguous_model_is_an_error():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = LlamaConfig(num_hidden_layers=2)
            self.a = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.b = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="cannot identify the decoder layer list"):
        decoder_layers(Odd())
