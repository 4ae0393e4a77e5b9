"""Tuning under sparsity (issue 13 section 2): PERP keeps the pruned zeros through training and export; PST's
density follows its cubic schedule and its importance parameters are trained. Every expectation is computed here
from the papers' equations, on tiny_llama built the way a run builds it (pruned by the prune stage first)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import summary, train_here, train_losses
from tests.contracts.test_peft_family import Row, make, train
from tests.golden import runs as golden
from tuneforge.config.compose import compose
from tuneforge.errors import InputError
from tuneforge.hooks import TrainContext
from tuneforge.runner.objective import CausalLM

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


def cubic(t: int, total: int, si: float, sf: float, wi: float, wf: float) -> float:
    """PST's sparsity at step t (the reference's schedule_sparsity_ratio, written out)."""
    if t <= wi * total:
        return si
    if t > total - wf * total:
        return sf
    return sf + (si - sf) * (1 - (t - wi * total) / (total - (wi + wf) * total)) ** 3


def test_pst_mask_is_the_top_k_of_its_importance_and_density_follows_the_schedule(tmp_path):
    total, sf, wi, wf = 5, 0.5, 0.2, 0.4
    model, method, batch, *_ = make(Row(["peft=pst", "peft.r=2", "peft.mask_r=2", f"peft.sparsity={sf}",
                                         f"peft.initial_warmup={wi}", f"peft.final_warmup={wf}"], ""), tmp_path)
    names = [f"model.layers.{i}.{p}" for i in range(LAYERS) for p in PROJ]
    parts = ("weight_U", "weight_V", "mask_A", "mask_B", "mask_R", "mask_C")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{n}.{x}" for n in names for x in parts}
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    objective, seen = CausalLM(model), []
    for t in range(total):
        method.on_step_start(TrainContext(step=t, total_steps=total, model=model))
        want = cubic(t, total, 0.0, sf, wi, wf)
        seen.append(want)
        with torch.no_grad():
            for n in names:
                m = model.get_submodule(n)
                w = m.base.weight + m.weight_U @ m.weight_V  # beta = 1
                score = w.abs() + m.mask_A @ m.mask_B + m.mask_R[:, None] + m.mask_C[None, :]  # alpha1 = alpha2 = 1
                keep = w.numel() - round(want * w.numel())
                top = torch.zeros(w.numel(), dtype=torch.bool)
                top[torch.topk(score.flatten(), keep).indices] = True
                used = m(torch.eye(w.shape[1])).T  # the layer's effective weight, read through its forward
                assert torch.equal(used.flatten() != 0, top), f"step {t} {n}"
                torch.testing.assert_close(used, w * top.view_as(w), rtol=1e-5, atol=1e-6)
        if t not in (1, 3):  # two optimizer steps move the importance; the schedule needs none
            continue
        loss = objective(**batch)
        loss.backward()
        if t == 3:  # after a step (B != 0), the task's gradient reaches every importance parameter
            for n in names:
                m = model.get_submodule(n)
                for x in parts:
                    assert getattr(m, x).grad.abs().sum() > 0, f"{n}.{x}: no gradient"
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert seen[0] == seen[1] == 0.0 and 0 < seen[2] < seen[3] == sf == seen[4]  # every branch of the schedule
    model.eval()
    with torch.no_grad():
        want_logits = model(input_ids=batch["input_ids"]).logits
        merged = method.merged(model)
        torch.testing.assert_close(merged(input_ids=batch["input_ids"]).logits, want_logits, rtol=1e-5, atol=1e-5)
    for n in names:
        w = merged.get_submodule(n).weight
        assert int((w == 0).sum()) == round(sf * w.numel()), n


def test_pst_straight_through_gradients_match_the_equations():
    """On a toy layer: dL/dM = dL/dW' ⊙ (W + beta U V) passes straight through TopK to S, so
    dL/dR = alpha2 · rowsum, dL/dC = alpha2 · colsum, dL/dA = alpha1 · dL/dM Bᵀ, dL/dB = alpha1 · Aᵀ dL/dM."""
    from tuneforge.peft.pst.layer import PstLinear
    from tuneforge.peft.pst.spec import PstSpec

    g = torch.Generator().manual_seed(0)
    spec = PstSpec(r=2, mask_r=3, beta=0.5, alpha1=0.7, alpha2=1.3)
    m = PstLinear(torch.nn.Linear(6, 5, bias=False), spec, g)
    with torch.no_grad():
        for p in (m.weight_V, m.mask_B, m.mask_R, m.mask_C):
            p.copy_(torch.randn(p.shape, generator=g))
    m.n_kept.fill_(12)
    x, gy = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    (m(x) * gy).sum().backward()
    with torch.no_grad():
        w = m.base.weight + 0.5 * m.weight_U @ m.weight_V
        gm = (gy.T @ x) * w  # dL/dW' ⊙ w
    torch.testing.assert_close(m.mask_R.grad, 1.3 * gm.sum(1))
    torch.testing.assert_close(m.mask_C.grad, 1.3 * gm.sum(0))
    torch.testing.assert_close(m.mask_A.grad, 0.7 * gm @ m.mask_B.detach().T)
    torch.testing.assert_close(m.mask_B.grad, 0.7 * m.mask_A.detach().T @ gm)


@pytest.mark.parametrize("method", ["pst", "pat"])
def test_pst_and_pat_after_a_prune_stage_are_refused_with_the_fix(method):
    with pytest.raises(InputError) as e:
        compose(["recipe=quickstart_tiny", f"peft={method}", *PRUNED])
    assert f"peft={method} with prune=magnitude" in str(e.value) and "use prune=none" in str(e.value)


@pytest.mark.parametrize("recipe", ["perp_tiny", "pst_tiny", "pat_tiny"])
def test_tiny_recipe_trains_and_exports_a_sparse_or_narrow_model(recipe, tmp_path):
    """The recipe walk's run of these twins (listed in its RUN_ELSEWHERE), plus their export: a plain HF model that
    reproduces the run's own logits, with exactly half of every decoder linear zero (perp_tiny: the magnitude
    prune's zeros kept through training and merge; pst_tiny: PST's final sparsity) or, for pat_tiny, 48 of the
    64 hidden channels."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.cli import main

    run = train_here(*golden.ARGS[recipe], out=tmp_path / "run")
    assert summary(run)["status"] == "completed"
    golden.check(recipe, train_losses(run))
    assert main(["export", f"run_dir={run}"]) == 0
    model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    probe = load_file(str(run / "final" / "probe.safetensors"))
    with torch.no_grad():
        got = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(got, probe["logits"], rtol=1e-4, atol=1e-4)
    if recipe == "pat_tiny":
        assert model.config.hidden_size == 48 and model.model.embed_tokens.weight.shape[1] == 48
        return
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert len(linears) == LAYERS * len(PROJ)
    assert all(int((w == 0).sum()) == w.numel() // 2 for w in linears)


def test_pat_mask_ends_binary_at_the_target_count_and_the_shrunk_model_equals_the_masked_one(tmp_path):
    keep, total, d = 48, 5, 64  # tiny_llama: hidden 64; freeze after round(0.8 x 5) = 4 steps
    model, method, batch, *_ = make(Row(["peft=pat", "peft.r=4", f"peft.keep={keep}"], ""), tmp_path)
    writers = [f"model.layers.{i}.{p}" for i in range(LAYERS) for p in ("self_attn.o_proj", "mlp.down_proj")]
    hsms = [f"{w}.hsm" for w in writers] + ["model.pat_embed"]  # after every residual writer and the embedding
    assert {n for n, p in model.named_parameters() if p.requires_grad} == (
        {f"{h}.{x}" for h in hsms for x in ("W_up", "W_down", "scale")} | {"model.pat_mask.logits"})
    n_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and ".hsm." not in n)
    train(model, method, batch, steps=total)
    logits = model.model.pat_mask.logits.detach()
    mask = model.model.pat_mask()
    assert set(mask.unique().tolist()) == {0.0, 1.0} and int(mask.sum()) == keep
    assert torch.equal(mask.bool(), torch.zeros(d, dtype=torch.bool).index_fill(0, torch.topk(logits, keep).indices, True))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits  # the masked model
        small = method.merged(model)
        got = small(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert small.config.hidden_size == keep and sum(p.numel() for n, p in small.named_parameters() if ".layers." in n) < n_params
    assert not small.config.tie_word_embeddings  # the embedding's HSM changed the embedding, not the head
    from transformers import AutoModelForCausalLM

    small.save_pretrained(str(tmp_path / "small"))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "small")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=batch["input_ids"]).logits, want, rtol=1e-4, atol=1e-4)


def test_pat_identity_loss_reaches_w_down_as_its_gradient(tmp_path):
    """With a task loss that ignores the output, W_down's gradient is exactly weight x d MSE(W_down W_downᵀ, I)/dW_down
    (over grad_accum, once per step), computed here by autograd from the loss."""
    model, method, batch, specs, *_ = make(Row(["peft=pat", "peft.r=4", "peft.identity_weight=0.5"], ""), tmp_path)
    hsm = model.model.layers[0].self_attn.o_proj.hsm
    with torch.no_grad():
        hsm.W_down.add_(0.1 * torch.randn(hsm.W_down.shape, generator=torch.Generator().manual_seed(1)))
    d = hsm.W_down.detach().clone().requires_grad_(True)
    torch.nn.functional.mse_loss(d @ d.T, torch.eye(d.shape[0])).backward()
    (model(input_ids=batch["input_ids"]).logits * 0).sum().backward()
    torch.testing.assert_close(hsm.W_down.grad, 0.5 / specs["trainer"].grad_accum * d.grad, rtol=1e-5, atol=1e-7)


def test_pat_mask_follows_the_reference_schedule_and_its_loss_reaches_the_logits(tmp_path):
    """The authors' DimDownMask: M = 1 / (1 + exp(min(-T m, 10))) + b, T = 1 / (1 - ln max(1, t) / ln G + 1e-6),
    b = max(0.5 - t / G, 0) at step t of G; and with a task loss that ignores the output, the logits' gradient is
    exactly mask_weight x dL_M/dm over grad_accum, L_M = 10 |#{m >= 0} - keep| / keep + mean_{m>0} (m - 0.5)^2 +
    mean_{m<=0} (m + 0.5)^2 with the count's step straight-through (the reference's `binarize`): autograd here."""
    import math

    keep, total = 48, 50
    model, method, batch, specs, *_ = make(Row(["peft=pat", "peft.r=4", f"peft.keep={keep}", "peft.mask_weight=0.5"],
                                               ""), tmp_path)
    mask = model.model.pat_mask
    with torch.no_grad():
        mask.logits.copy_(0.3 * torch.randn(64, generator=torch.Generator().manual_seed(3)))
    m = mask.logits.detach().clone()
    for t in (0, 1, 10, 30):  # the freeze is at step 40
        method.on_step_start(TrainContext(step=t, total_steps=total, model=model))
        temp, bias = 1 / (1 - math.log(max(1, t)) / math.log(total) + 1e-6), max(0.5 - t / total, 0.0)
        torch.testing.assert_close(mask(), 1 / (1 + torch.exp(torch.clamp(-temp * m, max=10))) + bias)
    m.requires_grad_(True)
    count = ((m >= 0).float() + m - m.detach()).sum()
    loss = 10 * (count - keep).abs() / keep + ((m[m > 0] - 0.5) ** 2).mean() + ((m[m <= 0] + 0.5) ** 2).mean()
    loss.backward()
    (model(input_ids=batch["input_ids"]).logits * 0).sum().backward()
    torch.testing.assert_close(mask.logits.grad, 0.5 / specs["trainer"].grad_accum * m.grad, rtol=1e-5, atol=1e-7)
