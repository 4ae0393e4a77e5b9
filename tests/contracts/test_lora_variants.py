"""The defining property of each LoRA variant, QLoRA's 4-bit base, the LLM.int8() base and MiSS/Bone (beyond the
family contract)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.conftest import ok, run_dir_of, summary, train_here, train_losses, tuneforge
from tests.contracts.test_peft_family import Row, make
from tests.golden import runs as golden
from tuneforge.config.compose import compose
from tuneforge.errors import InputError

TINY = ["recipe=quickstart_tiny", "trainer.eval_at_start=false"]


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


# ---------------------------------------------------------------- QLoRA / quant=nf4
@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_qlora_base_is_nf4_linear4bit_frozen_double_quantized(precision, dtype):
    import bitsandbytes as bnb

    model, *_ = make(Row(["peft=qlora", "quant=nf4", "peft.r=4", f"precision={precision}"], ""))
    layers = lora_layers(model)
    assert len(layers) == 14  # 7 linear layers x 2 decoder layers
    for layer in layers:
        base = layer.get_base_layer()
        assert isinstance(base, bnb.nn.Linear4bit) and base.weight.dtype == torch.uint8
        assert not base.weight.requires_grad and base.compute_dtype == dtype
        qs = base.weight.quant_state
        assert qs.quant_type == "nf4" and qs.nested  # double quantization: the block scales are quantized too
    plain = [n for n, m in model.named_modules() if type(m) is nn.Linear and ".lora_" not in n]
    assert plain == ["base_model.model.lm_head"]  # every linear layer but the head is 4-bit
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_nf4_cross_axis_checks_name_the_fix():
    for overrides, fix in [(["peft=qlora"], "add quant=nf4"), (["peft=lora", "quant=nf4"], "use peft=qlora"),
                           (["model=smollm2_135m", "peft=qlora", "quant=nf4", "zero=zero3"], "use zero=zero2")]:
        with pytest.raises(InputError) as e:
            compose([*TINY, *overrides])
        assert fix in e.value.render(), e.value.render()
    compose([*TINY, "peft=qlora", "quant=nf4", "zero=zero3"])  # a model built from its config quantizes, then shards


def test_qlora_tiny_recipe_learns_and_exports_a_dequantized_model(tmp_path):
    """A real run of qlora_tiny: the loss falls; the export is a plain fp32 model (no 4-bit layer, no quantization
    config) that AutoModelForCausalLM loads and that reproduces the quantized+adapter model's logits. Its losses
    are the pinned ones (tests/golden/qlora_tiny.json)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = run_dir_of(ok(tuneforge("train", *golden.ARGS["qlora_tiny"], cwd=tmp_path)))
    s = summary(run)
    assert s["status"] == "completed"
    golden.check("qlora_tiny", train_losses(run))
    assert s["eval"]["eval_loss"] < s["eval_before"]["eval_loss"] - 0.05, (s["eval_before"], s["eval"])
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    config = json.loads((run / "export" / "config.json").read_text())
    assert "quantization_config" not in config
    weights = load_file(str(run / "export" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    assert sum(type(m) is nn.Linear for m in model.modules()) == 15  # 14 dequantized+merged layers and the head
    probe = load_file(str(run / "final" / "probe.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- LLM.int8() / quant=int8
def test_int8_base_is_frozen_row_quantized_and_computes_llm_int8(tiny_model_factory):
    """quant=int8 on tiny_llama: every decoder linear is a frozen int8 Linear8bitLt holding, row by row,
    C_W = round(127 W / max|W_row|) of the fp16 weights (LLM.int8() Sec. 3.1). Eval forward = Eq. 3-4 written out
    here: int8 rows of X times C_W, rescaled by s_X s_W / 127^2, plus the outlier columns (|x| >= 6) in full
    precision against the dequantized weight columns. CPU training forward: x (C_W s_W / 127)^T (bitsandbytes'
    weight-only CPU path)."""
    import bitsandbytes as bnb

    from tuneforge import registry
    from tuneforge.config.compose import build_specs

    model = tiny_model_factory(0)
    plain = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
    model = registry.build("quant", build_specs(compose([*TINY, "quant=int8", "peft=qlora"]))["quant"]).apply(model)
    int8 = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert len(int8) == 14 and set(plain) - set(int8) == {"lm_head"} and model.is_loaded_in_8bit
    for name, layer in int8.items():
        w16 = plain[name].half().float()
        s_w = w16.abs().amax(dim=1)
        assert layer.weight.dtype == torch.int8 and not layer.weight.requires_grad
        c_w = layer.weight.data.float()
        assert (c_w - 127 * w16 / s_w[:, None]).abs().max() <= 0.5 + 1e-4, name  # nearest (ties either way)
        assert torch.equal(c_w.abs().amax(dim=1), torch.full_like(s_w, 127.0)), name
    layer = int8["model.layers.0.mlp.down_proj"]
    c_w = layer.weight.data.float()
    s_w = plain["model.layers.0.mlp.down_proj"].half().float().abs().amax(dim=1)
    torch.manual_seed(0)
    x = torch.rand(5, layer.in_features) * 2 - 1
    x[:, 3] = 8.0  # an outlier feature: every row's value is above the threshold
    outliers = (x.half().float().abs() >= 6.0).any(dim=0)
    x_in = x.half().float().masked_fill(outliers, 0.0)
    s_x = x_in.abs().amax(dim=1)
    c_x = torch.round(127 * x_in / s_x[:, None])
    want = (c_x @ c_w.T) * s_x[:, None] * s_w[None, :] / 127**2 + x[:, outliers] @ (c_w[:, outliers] * s_w[:, None] / 127).T
    with torch.no_grad():
        layer.eval()
        torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-5)
        layer.train()
        torch.testing.assert_close(layer(x), x @ (c_w * s_w[:, None] / 127).T, rtol=1e-5, atol=1e-5)
        layer.eval()
        before = layer.weight.data_ptr()
        model._apply(lambda t: t.clone())  # as model.to(device) does: new data under the same parameter
        assert layer.weight.data_ptr() != before and layer.state.CB.data_ptr() == layer.weight.data_ptr()
        torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-5)


def test_int8_tiny_recipe_learns_and_exports_a_dequantized_model(tmp_path):
    """A real run of int8_tiny (in this process): only LoRA factors train, the loss falls and is the pinned one
    (tests/golden/int8_tiny.json); the export is a plain fp32 model that transformers loads and that reproduces the
    run's eval logits up to LLM.int8()'s activation rounding (the export multiplies unrounded inputs)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.cli import main

    run = train_here(*golden.ARGS["int8_tiny"], out=tmp_path / "run")
    s = summary(run)
    assert s["status"] == "completed"
    golden.check("int8_tiny", train_losses(run))
    assert s["eval"]["eval_loss"] < s["eval_before"]["eval_loss"] - 0.05, (s["eval_before"], s["eval"])
    trained = load_file(str(run / "final" / "trainable.safetensors"))
    assert len(trained) == 28 and all(".lora_" in n for n in trained)
    assert main(["export", f"run_dir={run}"]) == 0
    assert "quantization_config" not in json.loads((run / "export" / "config.json").read_text())
    assert {t.dtype for t in load_file(str(run / "export" / "model.safetensors")).values()} == {torch.float32}
    model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    assert sum(type(m) is nn.Linear for m in model.modules()) == 15
    probe = load_file(str(run / "final" / "probe.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=0, atol=2e-2)  # measured: 5e-3 (logits ~1)


def test_int8_cross_axis_checks_name_the_fix():
    for overrides, fix in [(["peft=lora", "quant=int8"], "8-bit bases are trained with peft=qlora; use peft=qlora"),
                           (["peft=lisa", "quant=int8"], "e.g. peft=qlora), or quant=none"),
                           (["model=smollm2_135m", "peft=qlora", "quant=int8", "zero=zero3"], "use zero=zero2"),
                           (["peft=qlora"], "add quant=nf4 (or quant=int8)")]:
        with pytest.raises(InputError) as e:
            compose([*TINY, *overrides])
        assert fix in e.value.render(), e.value.render()


# ---------------------------------------------------------------- LoRA variants through PEFT
def test_rslora_scales_by_alpha_over_sqrt_r():
    for name, expect in [("rslora", 16 / math.sqrt(4)), ("lora", 16 / 4)]:
        model, *_ = make(Row([f"peft={name}", "peft.r=4", "peft.alpha=16"], ""))
        scales = [layer.scaling["default"] for layer in lora_layers(model)]
        assert len(scales) == 14 and scales == pytest.approx([expect] * 14), name


def test_dora_magnitude_starts_at_the_row_norms_of_w0():
    model, *_ = make(Row(["peft=dora", "peft.r=4"], ""))
    for layer in lora_layers(model):
        w0 = layer.get_base_layer().weight
        m = layer.lora_magnitude_vector["default"].weight
        assert m.requires_grad
        torch.testing.assert_close(m, w0.norm(dim=1), rtol=1e-6, atol=1e-6)


def test_pissa_starts_on_the_principal_subspace_with_the_function_unchanged():
    plain, *_, batch, _, _, _ = make(Row(["peft=full"], ""))  # the same seeded base weights
    base = dict(plain.named_parameters())
    model, *_ = make(Row(["peft=pissa", "peft.r=4", "peft.alpha=4"], ""))
    for name, layer in ((n, m) for n, m in model.named_modules() if m in lora_layers(model)):
        w = base[name.removeprefix("base_model.model.") + ".weight"].detach()
        ba = layer.get_delta_weight("default")  # scaling * B @ A
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        torch.testing.assert_close(ba, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.get_base_layer().weight + ba, w, rtol=1e-5, atol=1e-6)  # W_res + BA = W
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits,
                                   plain(input_ids=batch["input_ids"]).logits, rtol=1e-4, atol=1e-4)


def test_loraplus_groups_have_the_ratio():
    model, method, *_ = make(Row(["peft=loraplus", "peft.r=4", "peft.lr_ratio=8", "optim.lr=1e-3"], ""))
    a, b = method.param_groups(model)
    assert "lr" not in a and b["lr"] == pytest.approx(8e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".lora_A." in names[id(p)] for p in a["params"]) and all(".lora_B." in names[id(p)] for p in b["params"])
    assert len(a["params"]) == len(b["params"]) == 14


def test_loraplus_deepspeed_engine_steps_b_at_ratio_times_lr(tmp_path):
    """A real ZeRO-2 run: the optimizer DeepSpeed checkpoints holds both groups, B's lr = ratio x A's at the
    same schedule point."""
    run = run_dir_of(ok(tuneforge("train", *TINY, "peft=loraplus", "peft.r=4", "peft.lr_ratio=8", "zero=zero2",
                                  "trainer.max_steps=2", "trainer.micro_batch_size=2", "data.n_eval=2",
                                  "trainer.max_new_tokens=2", cwd=tmp_path)))
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    [optim] = list((run / "checkpoints").glob("step_2/**/*optim_states.pt"))
    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        state = torch.load(optim, map_location="cpu", weights_only=True)["optimizer_state_dict"]
    groups = state["base_optimizer_state"]["param_groups"]
    assert len(groups) == 2  # the schedule scales each group's own peak lr (initial_lr); the run ends at lr 0
    assert groups[0]["initial_lr"] == pytest.approx(3e-3)  # quickstart_tiny's optim.lr
    assert groups[1]["initial_lr"] == pytest.approx(8 * 3e-3)


# ---------------------------------------------------------------- MiSS / Bone: forward == closed form
def small(init_weights, r=4, out_f=8, in_f=12):
    from peft import MissConfig, get_peft_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(in_f, out_f))
    model = get_peft_model(net, MissConfig(r=r, target_modules=["0"], init_weights=init_weights))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.miss_block["default"].normal_(0, 0.3)  # a trained-looking block (zero at init)
    return model, layer, layer.get_base_layer().weight.detach().clone(), layer.get_base_layer().bias.detach()


def check_merge_unmerge(model, layer, x, want, w0):
    with torch.no_grad():
        layer.merge()
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(layer.get_base_layer().weight, w0, rtol=1e-5, atol=1e-5)


def test_miss_forward_is_its_closed_form():
    """MiSS: y = x W0^T + b + (sum_k x_k) D, x_k the k-th r-sized shard of x (D: r x out_features)."""
    r = 4
    model, layer, w0, b = small(True, r=r)
    d = layer.miss_block["default"].detach()
    x = torch.randn(3, 12)
    shards = sum(x[:, k * r:(k + 1) * r] for k in range(12 // r))
    want = x @ w0.T + b + shards @ d
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    check_merge_unmerge(model, layer, x, want, w0)


def test_bone_forward_is_its_closed_form():
    """Bone: blocks W'_ij = W_ij + W_ij D_i + D_i (r x r blocks, i over out_features / r); y = x W'^T + b."""
    r = 4
    model, layer, w0, b = small("bat", r=r)
    d = layer.miss_block["default"].detach()
    w = w0.clone()
    for i in range(8 // r):
        for j in range(12 // r):
            blk = w0[i * r:(i + 1) * r, j * r:(j + 1) * r]
            w[i * r:(i + 1) * r, j * r:(j + 1) * r] = blk + blk @ d[i] + d[i]
    x = torch.randn(3, 12)
    want = x @ w.T + b
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    check_merge_unmerge(model, layer, x, want, w0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qlora_on_cuda_learns_and_exports(tmp_path):
    """The CUDA path of bitsandbytes' NF4 (the CPU path above is its reference): a real run on the GPU, bf16
    compute; the loss falls and the dequantized export reproduces the run's logits."""

    cuda_run_learns_and_exports("qlora_tiny", tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int8_on_cuda_matches_the_cpu_reference_learns_and_exports(tmp_path):
    """The CUDA path of bitsandbytes' LLM.int8() (its int8 matmul, also in training) against the CPU reference:
    one quantized layer's eval forward equals the CPU layer's; a real run on the GPU lowers the loss and its
    dequantized export reproduces the run's logits."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    w, x = torch.randn(32, 64) * 0.1, torch.randn(5, 64)
    x[:, 3] = 8.0
    outs = []
    for device in ("cpu", "cuda"):
        layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        layer = layer.to(device).eval()
        with torch.no_grad():
            outs.append(layer(x.to(device).half()).float().cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-2, atol=1e-2)  # fp16 outputs, different kernels
    cuda_run_learns_and_exports("int8_tiny", tmp_path)


def cuda_run_learns_and_exports(recipe: str, tmp_path) -> None:
    """A 6-step bf16 run of `recipe` on the GPU lowers the loss, and its dequantized export reproduces the run's
    logits (within bf16 / int8 rounding)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = run_dir_of(ok(tuneforge("train", f"recipe={recipe}", "trainer.device=cuda", "precision=bf16",
                                  "trainer.max_steps=6", "trainer.save_every=0", "trainer.eval_at_start=false",
                                  cwd=tmp_path)))
    losses = train_losses(run)
    assert summary(run)["status"] == "completed" and losses[-1] < losses[0], losses
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    probe = load_file(str(run / "final" / "probe.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=5e-2, atol=1e-1)  # the run computed in bf16
