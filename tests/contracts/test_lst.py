"""LST's defining properties (arXiv 2206.06522), on the tiny Llama built the way a run builds it. Each is checked
against a computation written here from the paper's equations, not with the method's own helpers:
- the LM head reads up(norm(h^S_K)) (the paper), with h^S_k = block_k(mu_k down_k(h^B_{i_k}) + (1 - mu_k) h^S_{k-1})
  over the kept layers i_k only;
- layer dropping: dropped layers have no side block, ladder or gate;
- Fisher information = the sum over samples of squared per-sample gradients of the training loss, and the pruned
  side network keeps the top-scored units of it;
- no gradient reaches the backbone; activations saved for backward are a small fraction of LoRA's;
- generation with the KV cache equals recomputation; pruned init with r=1 and closed gates is the backbone;
- bad knobs are problems listed before the model loads.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tests.contracts.test_peft_family import Row, make
from tuneforge.config.checks import cross_axis_warnings
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.models.footprint import SavedForBackward
from tuneforge.models.layers import unwrap
from tuneforge.peft.base import MethodContext
from tuneforge.peft.lst.apply import Lst, side_of
from tuneforge.peft.lst.prune import fisher_scores
from tuneforge.peft.lst.spec import LstSpec
from tuneforge.runner.objective import CausalLM

LST = Row(["peft=lst"], r"\.side\.", merges=False)
PLAIN = Row(["peft=full"], ".")


def lively(model):
    """Give the up-projection random weights, so the side network shapes the output and its gradients."""
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


def by_hand(model, ids, kept: list[int]) -> torch.Tensor:
    """What the LM head must read, from the equations: the backbone's layer outputs (taken here with our own hooks),
    the ladders and gates of the kept layers only, the side blocks, the side norm and the up-projection."""
    dec = unwrap(model).get_decoder()
    side, backbone = dec.side, dec.backbone
    outs, embeds = {}, {}
    hooks = [backbone.embed_tokens.register_forward_hook(lambda m, a, o: embeds.setdefault("e", o))]
    hooks += [backbone.layers[i].register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, o)) for i in range(
        len(backbone.layers))]
    with torch.no_grad():
        backbone(input_ids=ids)
    for h in hooks:
        h.remove()
    pos = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        h = side.downs[0](embeds["e"])
        rope = side.rotary_emb(h, position_ids=pos)
        for k, i in enumerate(kept):
            mu = torch.sigmoid(side.alpha[k] / 0.1)
            h = side.layers[k](mu * side.downs[k + 1](outs[i]) + (1 - mu) * h, attention_mask=None,
                               position_embeddings=rope, position_ids=pos)  # None: causal attention (sdpa)
        return side.up(side.norm(h))


def test_lm_head_reads_the_side_output(tmp_path):
    model, _, batch, *_ = make(Row(["peft=lst", "model.arch.num_hidden_layers=6"], "side"), tmp_path)
    lively(model).eval()
    with torch.no_grad():
        side_of(model).alpha.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    ids = batch["input_ids"][:2, :20]
    seen = {}
    head = unwrap(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    handle.remove()
    want = by_hand(model, ids, kept=[1, 2, 3, 5])  # drop_every=4: layers 0 and 4 have no side block
    torch.testing.assert_close(seen["x"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, want @ head.weight.T, rtol=1e-4, atol=1e-4)


def test_dropped_layers_are_absent_from_the_side_network(tmp_path):
    model, *_ = make(Row(["peft=lst", "model.arch.num_hidden_layers=8"], "side"), tmp_path / "every4")
    dec = unwrap(model).get_decoder()
    kept = [i for i in range(8) if i % 4]  # the authors' T5-base dropping: layers 1, 5, 9 of 12 (1-based)
    assert dec.side.layer_ids == kept == [1, 2, 3, 5, 6, 7]
    assert len(dec.side.layers) == len(kept) and len(dec.side.downs) == len(kept) + 1
    assert dec.side.alpha.shape == (len(kept),)
    for k, i in enumerate(kept):  # side block k is pruned from backbone layer kept[k]: its MLP rows come from there
        keep = dec.side.downs[0].weight.argmax(1)
        full = dec.backbone.layers[i].mlp.gate_proj.weight[:, keep]
        assert all((full == row).all(1).any() for row in dec.side.layers[k].mlp.gate_proj.weight)
    listed, *_ = make(Row(["peft=lst", "model.arch.num_hidden_layers=8", "peft.side_layers=[7,3]"], "side"),
                      tmp_path / "listed")
    assert side_of(listed).layer_ids == [3, 7] and len(side_of(listed).layers) == 2
    every, *_ = make(Row(["peft=lst", "peft.drop_every=0"], "side"), tmp_path / "all")
    assert side_of(every).layer_ids == [0, 1]


def test_fisher_is_the_sum_of_squared_sample_gradients_and_chooses_the_units(tmp_path):
    n = 5
    model, method, _, specs, _, ctx = make(Row(["peft=lst", "peft.drop_every=0", f"peft.fisher_samples={n}"],
                                               "side"), tmp_path / "lst")
    plain, *_ = make(PLAIN, tmp_path / "plain")  # the same pretrained (seeded) weights, no side network
    pool = list(ctx.train_samples)
    random.Random(specs["trainer"].seed).shuffle(pool)
    samples = pool[:n]
    layers = unwrap(plain).model.layers
    names = {f"{i}.{m}.weight": layers[i].get_submodule(m).weight for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    want = {k: torch.zeros_like(p) for k, p in names.items()}
    for s in samples:  # empirical Fisher: per-sample loss (mean over its trained tokens), squared gradient, summed
        ids, labels = torch.tensor([s.input_ids]), torch.tensor([s.labels])
        logits = plain(input_ids=ids).logits[0, :-1]
        target = labels[0, 1:]
        loss = F.cross_entropy(logits[target != -100], target[target != -100])
        for k, g in zip(names, torch.autograd.grad(loss, list(names.values()))):
            want[k] += g.square()
    got = fisher_scores(unwrap(plain), samples, [0, 1])
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-6 * want[k].max().item())
    # the side network keeps what those scores rank highest (the selection rules written out here)
    sel = method.selection
    residual = torch.stack([sum(want[f"{i}.{m}"].sum(0) for m in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                                   "self_attn.v_proj.weight", "mlp.gate_proj.weight",
                                                                   "mlp.up_proj.weight"))
                            + want[f"{i}.self_attn.o_proj.weight"].sum(1) + want[f"{i}.mlp.down_proj.weight"].sum(1)
                            for i in range(2)]).sum(0)
    keep = sorted(residual.topk(8).indices.tolist())  # d / r = 64 / 8
    assert sel["residual"] == keep
    for i in range(2):
        units = (want[f"{i}.mlp.gate_proj.weight"][:, keep] * want[f"{i}.mlp.up_proj.weight"][:, keep]).sum(1)
        assert sel["mlp_units"][i] == sorted(units.topk(16).indices.tolist())  # d_ff / r = 128 / 8
        side_mlp = unwrap(model).get_decoder().side.layers[i].mlp
        torch.testing.assert_close(side_mlp.up_proj.weight, layers[i].mlp.up_proj.weight[sel["mlp_units"][i]][:, keep],
                                   rtol=0, atol=0)
    assert (tmp_path / "lst" / "lst").is_dir()  # cached for eval/export, which rebuild without training samples
    rebuilt = Lst(method.spec)
    rebuilt.apply(make(PLAIN, tmp_path / "p2")[0], MethodContext(seed=ctx.seed, run_dir=ctx.run_dir, specs=ctx.specs))
    assert rebuilt.selection == sel
    with pytest.raises(InputError, match="no training samples and no cached selection"):
        Lst(method.spec).apply(make(PLAIN, tmp_path / "p3")[0], MethodContext(seed=ctx.seed, specs=ctx.specs))


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


def test_config_problems_found_up_front():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, head_dim=64,
                         num_hidden_layers=30)
    assert Lst.check_model(LstSpec(reduction=8), config) == []
    problems = Lst.check_model(LstSpec(reduction=5), config)
    assert any("hidden_size=576" in p for p in problems) and any("even integer" in p for p in problems)
    assert Lst.check_model(LstSpec(side_layers=[3, 30]), config) == [
        "peft.side_layers=[3, 30]: [30] out of range for the model's 30 layers: use indices in [0, 29]"]
    one = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1)
    assert "drops every side layer" in Lst.check_model(LstSpec(), one)[0]  # drop_every=4 drops layer 0 of 1
    with pytest.raises(InputError) as e:  # every knob problem at once, at compose time (before any model loads)
        compose(["recipe=quickstart_tiny", "peft=lst", "peft.drop_every=1", "peft.init=pruned", "peft.side_layers=[1,1]",
                 "peft.fisher_samples=0"])
    text = str(e.value)
    assert all(s in text for s in ("drop_every=1 must be 0", "init=pruned was renamed", "fisher_samples=0 must be > 0",
                                   "side_layers=[1, 1] must be distinct")), text
    specs = build_specs(compose(["recipe=quickstart_tiny", "peft=lst", "model.gradient_checkpointing=true"]))
    assert any("set model.gradient_checkpointing=false" in w for w in cross_axis_warnings(specs))
    with pytest.raises(InputError, match="set peft.init=random"):  # pretrained weights loaded into ZeRO-3 partitions
        compose(["recipe=quickstart", "peft=lst", "zero=zero3"])
    compose(["recipe=quickstart", "peft=lst", "zero=zero3", "peft.init=random"])


@pytest.mark.parametrize("init", ["fisher", "magnitude"])
def test_pruned_init_without_reduction_is_the_backbone(init, tmp_path):
    """Pruning keeps the top-scored rows/columns; with r=1 it keeps them all, so with closed gates (mu = 0: each
    side block reads only the previous one) and no dropped layer, the side network recomputes the backbone and
    the LM head reads its final hidden state: the model's logits are the pretrained model's."""
    model, _, batch, *_ = make(Row(["peft=lst", "peft.reduction=1", "peft.gate_init=-100", "peft.drop_every=0",
                                    f"peft.init={init}"], "side"), tmp_path / "lst")
    plain, *_ = make(PLAIN, tmp_path / "plain")
    ids = batch["input_ids"][:, :24]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_pruned_init_keeps_backbone_entries(tmp_path):
    pruned, *_ = make(LST, tmp_path / "pruned")
    random_, *_ = make(Row(["peft=lst", "peft.init=random"], "side"), tmp_path / "random")
    dec = unwrap(pruned).get_decoder()
    keep = dec.side.downs[0].weight.argmax(1)  # the ladders start as selections of the kept dimensions
    assert len(set(keep.tolist())) == dec.side.config.hidden_size
    torch.testing.assert_close(dec.side.norm.weight, dec.backbone.norm.weight[keep], rtol=0, atol=0)
    i = dec.side.layer_ids[0]
    gate, full = dec.side.layers[0].mlp.gate_proj.weight, dec.backbone.layers[i].mlp.gate_proj.weight[:, keep]
    assert all((full == row).all(1).any() for row in gate)  # every side row: a backbone row at the kept columns
    assert set(dec.side.rotary_emb.inv_freq.tolist()) <= set(dec.backbone.rotary_emb.inv_freq.tolist())
    assert not torch.equal(gate, unwrap(random_).get_decoder().side.layers[0].mlp.gate_proj.weight)
