"""Tuning under sparsity (issue 13 section 2): PERP keeps the pruned zeros through training and export; PST's
density follows its cubic schedule and its importance parameters are trained. Every expectation is computed here
from the papers' equations, on tiny_llama built the way a run builds it (pruned by the prune stage first)."""

from __future__ import annotations

import pytest
import torch

from tests.contracts.test_peft_family import Row, make, train

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"]
LAYERS = 2  # tiny_llama
PRUNED = ["prune=magnitude", "prune.sparsity=0.5"]


def perp_expected() -> set[str]:
    """PERP trains (Sec. 3): a low-rank pair per pruned linear, every norm, the head's LoRA (Llama has no biases)."""
    out = {f"model.layers.{i}.{p}.lora_{ab}" for i in range(LAYERS) for p in PROJ for ab in "AB"}
    out |= {f"model.layers.{i}.{n}.weight" for i in range(LAYERS) for n in ("input_layernorm", "post_attention_layernorm")}
    return out | {"model.norm.weight", "lm_head.lora_A", "lm_head.lora_B"}


@pytest.mark.parametrize("form", ["masklora", "scalelora"])
def test_perp_trains_the_intended_parameters_and_merges_without_new_nonzeros(form, tmp_path):
    model, method, batch, *_ = make(Row(["peft=perp", f"peft.form={form}", "peft.r=4", *PRUNED], ""), tmp_path)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == perp_expected()
    names = [f"model.layers.{i}.{p}" for i in range(LAYERS) for p in PROJ]
    base = {n: model.get_submodule(n).base.weight.detach().clone() for n in names}
    for n, w in base.items():  # the prune stage left exactly half of each matrix
        assert int((w == 0).sum()) == w.numel() // 2, n
    if form == "scalelora":  # start: B A = 1, so W ⊙ B A = W
        for n in names:
            m = model.get_submodule(n)
            torch.testing.assert_close(m.lora_B @ m.lora_A, torch.ones_like(base[n]), rtol=0, atol=1e-6)
    head0 = model.lm_head.base.weight.detach().clone()
    embed0 = model.model.embed_tokens.weight.detach().clone()
    train(model, method, batch, steps=1)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
        adapters = {n: model.get_submodule(n) for n in names}
        expect = {}
        for n, m in adapters.items():  # the paper's W' from the trained factors, written out here
            ba = m.lora_B @ m.lora_A
            if form == "masklora":
                expect[n] = base[n] + m.scaling * ba * (base[n] != 0).float()
            else:
                expect[n] = base[n] * ba
            assert not torch.equal(expect[n], base[n]), f"{n}: training did not move it"
        merged = method.merged(model)
        torch.testing.assert_close(merged(input_ids=batch["input_ids"]).logits, want, rtol=1e-5, atol=1e-5)
    out = tmp_path / "export"
    method.export(merged, out)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(out))
    for n in names:
        w = exported.get_submodule(n).weight.detach()
        torch.testing.assert_close(w, expect[n], rtol=1e-6, atol=1e-6)
        assert torch.equal(w == 0, base[n] == 0), f"{n}: the zero pattern changed"
    # the head trained (untied from the embeddings), the input embeddings did not
    assert not torch.equal(exported.lm_head.weight, head0)
    assert torch.equal(exported.model.embed_tokens.weight, embed0)
