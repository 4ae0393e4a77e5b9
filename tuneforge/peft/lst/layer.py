"""The ladder side network (arXiv 2206.06522, Sec. 3.2 and Fig. 3) and the decoder that runs it beside the frozen
backbone, in the decoder-only analogue of the authors' T5 code (ylsung/Ladder-Side-Tuning,
seq2seq/third_party/models/t5/modeling_side_t5.py).

With K = the backbone layers i_1 < ... < i_K that keep a side block (layer dropping, Sec. 3.2), h^B_e the
backbone's embedding output and h^B_i the output of backbone layer i (before the final norm):

    h^S_0 = down_0(h^B_e)
    h^S_k = block^S_k( mu_k * down_k(h^B_{i_k}) + (1 - mu_k) * h^S_{k-1} ),   mu_k = sigmoid(alpha_k / T),  k = 1..K
    the LM head reads  up(norm^S(h^S_K))              (the paper; the authors' default merge_last=False)

tuneforge's earlier form, h^B_L + up(norm^S(h^S_K)) (a residual correction of the backbone's final hidden state,
`up` starting at zero), was measured against this one on the quickstart task (bench/RESULTS.md, 2026-12-06): its
eval loss was worse at every learning rate tried (1.33-1.37 vs 1.15-1.20), so it was removed.

Where this follows the reference, line by line:
- one down-projection for the embeddings (`side_first_downsample`) and one per kept layer (`side_downsamples[i]`),
  d -> d/r, with biases (the authors' LST scripts set add_bias_sampling=True); up-projection d/r -> d with a bias;
- the side block k reads the gated mix of its predecessor and the ladder from the OUTPUT of backbone layer i_k
  (`layer_outputs[0]`, before any final norm), then runs a block of the backbone's own class whose hidden, MLP
  and head widths are divided by r, with the same number of heads (`side_config.d_model //= r` etc.);
- gates mu_k = sigmoid(alpha_k / T), alpha_k initialized to `gate_init` (reference gate_alpha=0), T=0.1 (gate_T);
- a dropped layer has no side block, no ladder and no gate: the side state passes it unchanged (`side_block[i]`
  is None for i not in `encoder_side_layers`);
- the side network ends with its own final norm (`final_side_layer_norm`), then `side_final_upsample`; with
  merge_last=False that is all the LM head sees.
Where it departs, and why:
- decoder-only: one stack (the reference has an encoder and a decoder side network, the decoder side network
  cross-attending to the encoder side network's output); the backbone's embeddings play the encoder-less input;
- gate orientation: the reference writes gate * side + (1 - gate) * ladder; tuneforge's mu weighs the ladder
  (gate_init=a here is gate_alpha=-a there; identical at the default 0, where mu = 0.5);
- the reference builds gate parameters for dropped layers too (never used); here only kept layers have one;
- RoPE replaces T5's relative position bias: the side blocks share one rotary embedding of head_dim / r
  dimensions (with pruned init, the kept frequency pairs of the backbone; see prune.py);
- no dropout (Llama-family decoders have none) and no T5 tied-head rescaling (d^-0.5, T5-specific).

The backbone runs under torch.no_grad(): no activation of it is kept for backward and no gradient reaches it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def shape_problems(config, r: int, layers: list[int] | None = None) -> list[str]:
    """Widths that the reduction r must divide (RoPE also needs an even side head dim), each with a value that
    works; the side layers must exist in the model and not all be dropped."""
    hd = head_dim(config)
    g = math.gcd(config.hidden_size, config.intermediate_size, hd // 2)
    fit = max(d for d in range(1, min(g, r) + 1) if g % d == 0)
    fix = f": set peft.reduction to a divisor of {g}, e.g. peft.reduction={fit}"
    out = [f"peft.reduction={r} does not divide the model's {k}={getattr(config, k)}{fix}"
           for k in ("hidden_size", "intermediate_size") if getattr(config, k) % r]
    if hd % r or (hd // r) % 2:
        out.append(f"peft.reduction={r}: the side head dim {hd}/{r} must be an even integer (RoPE){fix}")
    if layers is not None:
        n = config.num_hidden_layers
        if not layers:
            out.append(f"peft.drop_every drops every side layer of the model's {n} layers: use peft.drop_every=0 or "
                       "list peft.side_layers")
        elif bad := [i for i in layers if i >= n]:
            out.append(f"peft.side_layers={layers}: {bad} out of range for the model's {n} layers: use indices in "
                       f"[0, {n - 1}]")
    return out


def side_config(config, r: int, layers: list[int]):
    """The backbone's config with hidden, MLP and head widths divided by r, for the K kept layers."""
    cfg = copy.deepcopy(config)
    cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = config.hidden_size // r, config.intermediate_size // r, head_dim(config) // r
    cfg.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):  # e.g. sliding/full attention per layer (Qwen2/3, Mistral)
        cfg.layer_types = [config.layer_types[i] for i in layers]
    return cfg


class SideNetwork(nn.Module):
    def __init__(self, decoder: nn.Module, r: int, temperature: float, gate_init: float, layers: list[int]):
        super().__init__()
        self.config = cfg = side_config(decoder.config, r, layers)
        self.layer_ids = list(layers)  # side block k reads backbone layer layer_ids[k]
        d, ds, k = decoder.config.hidden_size, cfg.hidden_size, len(layers)
        self.downs = nn.ModuleList(nn.Linear(d, ds) for _ in range(k + 1))  # the ladders (0: the embeddings)
        self.alpha = nn.Parameter(torch.full((k,), float(gate_init)))
        self.layers = nn.ModuleList(type(decoder.layers[0])(cfg, j) for j in range(k))
        self.norm = type(decoder.norm)(ds, eps=cfg.rms_norm_eps)
        self.rotary_emb = type(decoder.rotary_emb)(config=cfg)
        self.up = nn.Linear(ds, d)
        self.temperature = temperature

    def forward(self, embeds, ladder_inputs, attention_mask, position_ids, cache, use_cache):
        """up(norm(h^S_K)) from the backbone's embedding output and the outputs of the kept layers."""
        from transformers.masking_utils import create_causal_mask

        h = self.downs[0](embeds)
        mask = create_causal_mask(config=self.config, inputs_embeds=h, attention_mask=attention_mask,
                                  past_key_values=cache, position_ids=position_ids)
        rope = self.rotary_emb(h, position_ids=position_ids)
        mu = torch.sigmoid(self.alpha / self.temperature)
        for k, block in enumerate(self.layers):
            h = mu[k] * self.downs[k + 1](ladder_inputs[k]) + (1 - mu[k]) * h
            h = block(h, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                      past_key_values=cache, use_cache=use_cache)
        return self.up(self.norm(h))


class LadderDecoder(nn.Module):
    """Stands where the model's decoder stood (`model.model` for Llama): the frozen backbone runs without
    autograd, the side network on its layer outputs; the LM head reads the side network's up-projected output
    (the backbone's own final hidden state is not used). Generation works: the
    side blocks keep their own key/value cache, attached to the backbone's cache object (greedy/sampling
    decoding; beam search would not reorder it)."""

    def __init__(self, backbone: nn.Module, side: SideNetwork):
        super().__init__()
        self.backbone, self.side = backbone, side
        self.config = backbone.config

    def get_decoder(self):
        return self

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def backbone_states(self, **kwargs):
        """(backbone output, embedding output, outputs of the kept layers), all without autograd. The layer
        outputs are taken as the layers return them (before the final norm), by hooks on the kept layers only."""
        grabbed = {}

        def embeds(module, args, kw):
            grabbed["embeds"] = args[0] if args else kw["hidden_states"]

        def output(i):
            def hook(module, args, out):
                grabbed[i] = out[0] if isinstance(out, tuple) else out
            return hook

        layers = self.backbone.layers
        handles = [layers[0].register_forward_pre_hook(embeds, with_kwargs=True)]
        handles += [layers[i].register_forward_hook(output(i)) for i in self.side.layer_ids]
        try:
            with torch.no_grad():  # LST: no backpropagation through the backbone, none of its activations kept
                out = self.backbone(**kwargs)
        finally:
            for h in handles:
                h.remove()
        return out, grabbed["embeds"], [grabbed[i] for i in self.side.layer_ids]

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
        out, embeds, ladder_inputs = self.backbone_states(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        side = self.side(embeds, ladder_inputs, attention_mask, position_ids, side_cache, use_cache)
        return BaseModelOutputWithPast(last_hidden_state=side, past_key_values=out.past_key_values)
