"""LST's defining properties (arXiv 2206.06522), on the tiny Llama built the way a run builds it:
- no gradient reaches the backbone, even with requires_grad switched on for all of it (the graph never reaches it);
- the activations autograd saves for backward are a small fraction of LoRA's (measured with saved_tensors_hooks);
- generation with the KV cache (the side blocks keep their own) equals recomputing the whole sequence;
- peft.init=pruned copies backbone sub-matrices consistently (with r=1 the side network recomputes the backbone);
- a reduction that does not divide the widths is a config problem; gradient checkpointing (useless here) a
  warning; pruned init on ZeRO-3 partitions a config problem.
"""

from __future__ import annotations

import pytest
import torch

from tests.contracts.test_peft_family import Row, make
from tuneforge.config.checks import cross_axis_warnings
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.models.footprint import SavedForBackward
from tuneforge.models.layers import unwrap
from tuneforge.peft.lst.apply import Lst, side_of
from tuneforge.peft.lst.spec import LstSpec
from tuneforge.runner.objective import CausalLM

LST = Row(["peft=lst"], r"\.side\.", merges=False)


def lively(model):
    """Give the zero-initialized up-projection weights, so the side network shapes the output and its gradients."""
    with torch.no_grad():
        side_of(model).up.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def test_backbone_receives_no_gradient_only_side_params_train(tmp_path):
    model, _, batch, *_ = make(LST, tmp_path)
    lively(model)
    side = {id(p) for p in side_of(model).parameters()}
    assert all(not p.requires_grad for p in model.parameters() if id(p) not in side)
    assert all(p.requires_grad for p in side_of(model).parameters())
    # The frozen LM head (tied to the embeddings here) sits after the side network: backward passes through it to
    # reach the side network, as it must. Every other parameter is the backbone, which runs without autograd:
    # even when asked for, no gradient can reach it.
    head = unwrap(model).get_output_embeddings().weight
    backbone = [(n, p) for n, p in unwrap(model).get_decoder().backbone.named_parameters() if p is not head]
    assert len(backbone) > 10
    for _, p in backbone:
        p.requires_grad_(True)
    CausalLM(model)(**batch).backward()
    reached = [n for n, p in backbone if p.grad is not None]
    assert not reached, f"gradients reached the backbone: {reached[:5]}"
    missing = [n for n, p in side_of(model).named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"side parameters without a gradient: {missing}"


def saved_bytes(row: Row, tmp_path) -> int:
    """Bytes autograd keeps for backward in one decoder forward (parameters excluded; each storage once).
    The LM head and loss are the same for every method and excluded: on the tiny model their vocabulary-wide
    logits would dominate all methods alike."""
    model, _, batch, *_ = make(row, tmp_path)
    model.train()
    with SavedForBackward(model) as saved:
        hidden = unwrap(model).get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             use_cache=False).last_hidden_state
    hidden.float().pow(2).mean().backward()
    return saved.bytes


def test_saved_activations_far_below_lora(tmp_path):
    full = saved_bytes(Row(["peft=full"], "."), tmp_path / "full")
    lora = saved_bytes(Row(["peft=lora", "peft.r=16"], "lora"), tmp_path / "lora")
    lst = saved_bytes(LST, tmp_path / "lst")
    print(f"saved for backward (decoder): full {full:,} B, LoRA {lora:,} B, LST {lst:,} B")
    assert 0 < lst < lora / 2 and lora <= full


def test_generation_with_cache_equals_recomputation(tmp_path):
    model, _, _, _, tok, _ = make(LST, tmp_path)
    lively(model).eval()
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(["Tom has 12 apples and buys", "Hi"], return_tensors="pt", padding=True)
    tok.padding_side = side
    out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for _ in range(6):  # greedy decoding, recomputing every position without a cache
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(out, ids)


def test_side_network_starts_as_the_pretrained_model(tmp_path):
    lst, _, batch, *_ = make(LST, tmp_path / "lst")
    plain, *_ = make(Row(["peft=full"], "."), tmp_path / "full")
    with torch.no_grad():
        torch.testing.assert_close(lst(input_ids=batch["input_ids"]).logits, plain(input_ids=batch["input_ids"]).logits,
                                   rtol=0, atol=0)


def test_config_problems_found_up_front():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, head_dim=64)
    assert Lst.check_model(LstSpec(reduction=8), config) == []
    problems = Lst.check_model(LstSpec(reduction=5), config)
    assert any("hidden_size=576" in p for p in problems) and any("even integer" in p for p in problems)
    specs = build_specs(compose(["recipe=quickstart_tiny", "peft=lst", "model.gradient_checkpointing=true"]))
    assert any("set model.gradient_checkpointing=false" in w for w in cross_axis_warnings(specs))
    with pytest.raises(InputError, match="set peft.init=random"):  # pretrained weights loaded into ZeRO-3 partitions
        compose(["recipe=quickstart", "peft=lst", "zero=zero3"])
    compose(["recipe=quickstart", "peft=lst", "zero=zero3", "peft.init=random"])


def test_pruned_init_without_reduction_is_the_backbone(tmp_path):
    """peft.init=pruned keeps the largest-magnitude rows/columns; with r=1 it keeps them all, so with closed gates
    (mu_i = 0: each side block reads only the previous one) the side network recomputes the backbone exactly,
    rotary frequencies included."""
    model, _, batch, *_ = make(Row(["peft=lst", "peft.reduction=1", "peft.gate_init=-100"], "side"), tmp_path)
    dec = unwrap(model).get_decoder()
    ids = batch["input_ids"][:, :24]
    with torch.no_grad():
        dec.side.up.weight.copy_(torch.eye(dec.side.up.weight.shape[0]))
        out = dec.backbone(input_ids=ids, output_hidden_states=True)
        side = dec.side(out.hidden_states, None, torch.arange(ids.shape[1])[None], None, False)
    torch.testing.assert_close(side, out.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_pruned_init_keeps_backbone_entries(tmp_path):
    pruned, *_ = make(LST, tmp_path / "pruned")
    random, *_ = make(Row(["peft=lst", "peft.init=random"], "side"), tmp_path / "random")
    dec = unwrap(pruned).get_decoder()
    keep = dec.side.downs[0].weight.argmax(1)  # the ladders start as selections of the kept dimensions
    assert len(set(keep.tolist())) == dec.side.config.hidden_size
    torch.testing.assert_close(dec.side.norm.weight, dec.backbone.norm.weight[keep], rtol=0, atol=0)
    gate, full = dec.side.layers[1].mlp.gate_proj.weight, dec.backbone.layers[1].mlp.gate_proj.weight[:, keep]
    assert all((full == row).all(1).any() for row in gate)  # every side row: a backbone row at the kept columns
    assert set(dec.side.rotary_emb.inv_freq.tolist()) <= set(dec.backbone.rotary_emb.inv_freq.tolist())
    assert not torch.equal(gate, unwrap(random).get_decoder().side.layers[1].mlp.gate_proj.weight)
