"""precision=fp8: the emulated FP8 linear against the equations written out here (q = sat(t * fmax / amax(|t|)),
fp32 matmul, unscale), its accuracy against fp32 (torchao's SQNR thresholds), against torchao's own emulation,
which linears are converted, the cross-axis refusals, a tiny run (LoRA on FP8 base linears under ZeRO-2, and
full fine-tuning), and on a GPU torchao's CUDA kernels against the CPU reference."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from tests.conftest import train_here, train_losses
from tests.golden import runs as golden
from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError
from tuneforge.peft.base import MethodContext
from tuneforge.precision.fp8.layer import to_fp8

RECIPES = ("tensorwise", "rowwise")


def fake_fp8(t, dtype, dim=None, pow2=False):
    """t quantized to `dtype` with the dynamic scale fmax / amax(|t|) (per tensor, or per slice along `dim`),
    saturated, and dequantized back to fp32."""
    fmax = torch.finfo(dtype).max
    amax = t.abs().max() if dim is None else t.abs().amax(dim, keepdim=True)
    scale = (fmax / amax.double()).float()
    if pow2:
        scale = 2.0 ** torch.floor(torch.log2(scale))
    return torch.clamp(t * scale, -fmax, fmax).to(dtype).float() / scale


def sqnr(ref, x):
    return (20 * torch.log10(ref.norm() / (ref - x).norm())).item()


def toy(seed=0, n_in=256, n_out=128):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    x = torch.randn(4, 16, n_in) * 2
    return lin, x, torch.randn(4, 16, n_out)


def fwd_bwd(lin, x, dy):
    x = x.clone().requires_grad_()
    y = lin(x)
    y.backward(dy)
    return y.detach(), x.grad, next(p.grad for n, p in lin.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_emulated_linear_equals_the_equations(recipe):
    """y = Q(x) Q(W)^T + b, dx = Q(dy) Q(W), dW = Q(dy)^T Q(x), with Q the per-tensor (tensorwise: E4M3 forward,
    E5M2 gradients) or per-row-of-the-reduction-axis (rowwise: E4M3, power-of-two scales) fake quantization."""
    lin, x, dy = toy()
    y, dx, dw = fwd_bwd(to_fp8(copy.deepcopy(lin), recipe), x, dy)
    e4, g = torch.float8_e4m3fn, (torch.float8_e4m3fn if recipe == "rowwise" else torch.float8_e5m2)
    rw = recipe == "rowwise"
    x2, dy2, w = x.reshape(-1, 256), dy.reshape(-1, 128), lin.weight.detach()
    ax = (lambda d: d) if rw else (lambda d: None)  # the axis each operand is scaled along (None: whole tensor)
    want_y = fake_fp8(x2, e4, ax(1), rw) @ fake_fp8(w, e4, ax(1), rw).T + lin.bias.detach()
    want_dx = fake_fp8(dy2, g, ax(1), rw) @ fake_fp8(w, e4, ax(0), rw)
    want_dw = fake_fp8(dy2, g, ax(0), rw).T @ fake_fp8(x2, e4, ax(0), rw)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y.reshape(-1, 128), want_y, **tol)
    torch.testing.assert_close(dx.reshape(-1, 256), want_dx, **tol)
    torch.testing.assert_close(dw, want_dw, **{"rtol": 1e-5, "atol": 1e-4})
    assert not torch.equal(y.reshape(-1, 128), x2 @ w.T + lin.bias.detach())  # it does quantize


@pytest.mark.parametrize("recipe", RECIPES)
def test_sqnr_against_fp32_meets_torchaos_thresholds(recipe):
    """torchao's float8 linear tests ask output SQNR >= 18 dB and weight-gradient SQNR >= 17 dB against high
    precision; the input gradient is held to the weight gradient's bar."""
    lin, x, dy = toy(1)
    y, dx, dw = fwd_bwd(to_fp8(copy.deepcopy(lin), recipe), x, dy)
    ry, rdx, rdw = fwd_bwd(copy.deepcopy(lin), x, dy)
    assert sqnr(ry, y) >= 18 and sqnr(rdw, dw) >= 17 and sqnr(rdx, dx) >= 17, (sqnr(ry, y), sqnr(rdw, dw))


@pytest.mark.parametrize("recipe", RECIPES)
def test_emulation_matches_torchaos_own_emulation(recipe):
    """torchao's Float8Linear with emulate=True (fp32 matmuls of its FP8 tensors, runs on CPU): the same numbers up
    to where each unscales (bitwise for rowwise's power-of-two scales)."""
    torchao_float8 = pytest.importorskip("torchao.float8")
    lin, x, dy = toy(2)
    ao = nn.Sequential(copy.deepcopy(lin))
    config = dataclasses.replace(torchao_float8.Float8LinearConfig.from_recipe_name(recipe), emulate=True)
    torchao_float8.convert_to_float8_training(ao, config=config)
    for ours, theirs in zip(fwd_bwd(to_fp8(copy.deepcopy(lin), recipe), x, dy), fwd_bwd(ao, x, dy)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def lora_model(tiny_model_factory, *overrides):
    model = tiny_model_factory(0, *overrides)
    specs = build_specs(compose(["model=tiny_llama", "peft=lora", "peft.r=16", "precision=fp8",
                                 "precision.emulate=true"]))
    model = registry.build("peft", specs["peft"]).apply(model, MethodContext(seed=0, specs=specs))
    return registry.build("precision", specs["precision"]).apply(model)


def test_only_eligible_linears_are_converted(tiny_model_factory):
    """Decoder linears with both dims multiples of 16 go FP8 (the frozen LoRA base layers); the MLP (width 120),
    the LM head and LoRA's own A/B linears (r=16: multiples of 16 too) stay in high precision."""
    model = lora_model(tiny_model_factory, "model.arch.intermediate_size=120")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    fp8 = {n for n, m in linears.items() if type(m).__name__ == "Fp8Linear"}
    want = {n for n, m in linears.items() if ".layers." in n and n.endswith(".base_layer")
            and m.in_features % 16 == 0 and m.out_features % 16 == 0}
    assert fp8 == want and len(want) == 8, sorted(fp8)  # q, k, v, o of 2 layers
    assert any("lm_head" in n for n in linears) and not any("lm_head" in n or "lora_" in n for n in fp8)
    assert all(not linears[n].weight.requires_grad for n in fp8)  # the frozen base; the adapters train
    assert any(m.weight.requires_grad and type(m) is nn.Linear for n, m in linears.items() if "lora_B" in n)


@pytest.mark.parametrize("overrides,fix", [
    (["precision=fp8"], "the run trains on a CPU, which has no FP8 matmul kernels: use a CUDA device of compute "
                        "capability >= 8.9 (Ada, Hopper), or set precision.emulate=true"),
    (["precision=fp8", "precision.emulate=true", "zero=zero3"], "does not support ZeRO-3"),
    (["recipe=qlora_tiny", "precision=fp8", "precision.emulate=true"], "use quant=none"),
])
def test_impossible_combinations_are_refused_with_the_fix(overrides, fix):
    with pytest.raises(InputError) as e:
        compose(["recipe=quickstart_tiny", "trainer.device=cpu", *overrides])
    assert len(e.value.problems) == 1 and fix in e.value.problems[0], e.value.render()


@pytest.mark.parametrize("what", ["fp8_tiny", "full rowwise"])
def test_a_tiny_run_learns(tmp_path, what):
    """The tiny twin (LoRA on emulated-FP8 base linears, ZeRO-2; its losses pinned) and full fine-tuning with
    every decoder linear in FP8 (rowwise, ZeRO-0): the loss falls."""
    args = golden.ARGS["fp8_tiny"] if what == "fp8_tiny" else \
        ["recipe=fp8_tiny", "peft=full", "precision.recipe=rowwise", "zero=zero0", "trainer.max_steps=4",
         "trainer.save_every=0", "trainer.eval_at_start=false", "optim.lr=1e-3", "trainer.threads=1"]
    run = train_here(*args, out=tmp_path / "run")
    losses = train_losses(run)
    if what == "fp8_tiny":
        golden.check("fp8_tiny", losses)
    assert losses[-1] < losses[0] - 0.05, losses
    assert "fp8: 14 linears in FP8 (emulated" in (run / "train.log").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA device of compute capability >= 8.9")
@pytest.mark.parametrize("recipe", RECIPES)
def test_torchao_cuda_matches_the_cpu_reference(tiny_model_factory, recipe):
    """torchao's FP8 kernels against the emulation on the same weights and inputs: the same scales and FP8 operands,
    so only accumulation order (and the forward's fast accumulation) differs; and apply() takes the torchao path
    on such a device, converting exactly the linears the plan picks."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    lin, x, dy = toy(3)
    cpu = fwd_bwd(to_fp8(copy.deepcopy(lin), recipe), x, dy)
    ao = nn.Sequential(copy.deepcopy(lin)).cuda()
    convert_to_float8_training(ao, config=Float8LinearConfig.from_recipe_name(recipe))
    for name, ref, got in zip(("y", "dx", "dW"), cpu, fwd_bwd(ao, x.cuda(), dy.cuda())):
        assert sqnr(ref, got.cpu()) >= 35, (name, sqnr(ref, got.cpu()))
    specs = build_specs(compose(["model=tiny_llama", "precision=fp8", f"precision.recipe={recipe}",
                                 "trainer.device=cuda"]))
    model = registry.build("precision", specs["precision"]).apply(tiny_model_factory(0))
    assert sum(type(m).__name__ == "Float8Linear" for m in model.modules()) == 14
