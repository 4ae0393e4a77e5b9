"""The ladder side network (Fig. 2 of arXiv 2206.06522) and the decoder that runs it beside the frozen backbone.

    h_0^S = down_0(h_0^B)                                               (the backbone's embedding output)
    h_i^S = block_i^S( mu_i * down_i(h_i^B) + (1 - mu_i) * h_{i-1}^S ),  mu_i = sigmoid(alpha_i / T),  i = 1..L
    h     = h_L^B + up(norm^S(h_L^S))                                   (then the frozen LM head)

h_i^B is the output of backbone layer i (HF's hidden_states[i]; the last one after the final norm), computed
under torch.no_grad(): no activation of the backbone is kept for backward and no gradient reaches it. The side
blocks are the backbone's own decoder-layer class built from a config whose hidden, MLP and head widths are
divided by r (same number of layers and heads). `up` starts at zero, so training starts from the pretrained model.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def shape_problems(config, r: int) -> list[str]:
    """Widths that the reduction r must divide (RoPE also needs an even side head dim), each with a value that works."""
    hd = head_dim(config)
    g = math.gcd(config.hidden_size, config.intermediate_size, hd // 2)
    fit = max(d for d in range(1, min(g, r) + 1) if g % d == 0)
    fix = f": set peft.reduction to a divisor of {g}, e.g. peft.reduction={fit}"
    out = [f"peft.reduction={r} does not divide the model's {k}={getattr(config, k)}{fix}"
           for k in ("hidden_size", "intermediate_size") if getattr(config, k) % r]
    if hd % r or (hd // r) % 2:
        out.append(f"peft.reduction={r}: the side head dim {hd}/{r} must be an even integer (RoPE){fix}")
    return out


def side_config(config, r: int):
    cfg = copy.deepcopy(config)
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = config.hidden_size // r, config.intermediate_size // r, head_dim(config) // r
    return cfg


class SideNetwork(nn.Module):
    def __init__(self, decoder: nn.Module, r: int, temperature: float, gate_init: float):
        super().__init__()
        self.config = cfg = side_config(decoder.config, r)
        d, ds, n = decoder.config.hidden_size, cfg.hidden_size, cfg.num_hidden_layers
        self.downs = nn.ModuleList(nn.Linear(d, ds, bias=False) for _ in range(n + 1))  # the ladders
        self.alpha = nn.Parameter(torch.full((n,), float(gate_init)))
        self.layers = nn.ModuleList(type(decoder.layers[0])(cfg, i) for i in range(n))
        self.norm = type(decoder.norm)(ds, eps=cfg.rms_norm_eps)
        self.rotary_emb = type(decoder.rotary_emb)(config=cfg)
        self.up = nn.Linear(ds, d, bias=False)
        nn.init.zeros_(self.up.weight)
        self.temperature = temperature

    def forward(self, backbone_states, attention_mask, position_ids, cache, use_cache):
        from transformers.masking_utils import create_causal_mask

        h = self.downs[0](backbone_states[0])
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=attention_mask,
                                  past_key_values=cache, position_ids=position_ids)
        rope = self.rotary_emb(h, position_ids=position_ids)
        mu = torch.sigmoid(self.alpha / self.temperature)
        for i, block in enumerate(self.layers):
            h = mu[i] * self.downs[i + 1](backbone_states[i + 1]) + (1 - mu[i]) * h
            h = block(h, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                      past_key_values=cache, use_cache=use_cache)
        return self.up(self.norm(h))


class LadderDecoder(nn.Module):
    """Stands where the model's decoder stood (`model.model` for Llama): the frozen backbone runs without
    autograd, the side network on its hidden states; the sum goes to the LM head. Generation works: the side
    blocks keep their own key/value cache, attached to the backbone's cache object (greedy/sampling decoding;
    beam search would not reorder it)."""

    def __init__(self, backbone: nn.Module, side: SideNetwork):
        super().__init__()
        self.backbone, self.side = backbone, side
        self.config = backbone.config

    def get_decoder(self):
        return self

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        from transformers.cache_utils import DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPast

        kwargs.pop("output_hidden_states", None)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        side_cache = None
        if past_key_values is not None:
            side_cache = getattr(past_key_values, "lst_side_cache", None)
            if side_cache is None:
                side_cache = past_key_values.lst_side_cache = DynamicCache()
        if position_ids is None:
            n = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            past = side_cache.get_seq_length() if side_cache is not None else 0
            device = (input_ids if input_ids is not None else inputs_embeds).device
            position_ids = torch.arange(past, past + n, device=device).unsqueeze(0)
        with torch.no_grad():  # LST: no backpropagation through the backbone, none of its activations kept
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                output_hidden_states=True, **kwargs)
        side = self.side(out.hidden_states, attention_mask, position_ids, side_cache, use_cache)
        return BaseModelOutputWithPast(last_hidden_state=out.last_hidden_state + side, past_key_values=out.past_key_values)
