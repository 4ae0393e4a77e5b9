"""L4Q's defining properties (tuneforge/peft/l4q), each against a computation written here from the equations:

- the hand-written backward passes torch's float64 gradcheck (rounding off: the straight-through gradients are then
  the exact derivatives of Wq = clamp(v, Q_n, Q_p) s + b, v = (W0 + k B A - b) / s) and, with rounding on, equals
  autograd through the straight-through quantizer written here;
- with B = 0 the layer is LSQ+ on W0: the same output and the same step/offset gradients as LSQ+ written here;
- the backward keeps no merged weight (every tensor saved for backward is the input or a parameter) and W0 never
  gets a gradient;
- the exported integer model (int8 codes + scales + offsets, loaded onto a plain base) computes exactly the
  training forward;
- the combinations that cannot work are refused before anything loads, with the fix.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuneforge.config.compose import compose
from tuneforge.errors import InputError
from tuneforge.peft.l4q.layer import L4QFunction, L4QLinear

BITS, GROUP, K = 4, 4, 0.5  # Q_n = -8, Q_p = 7; groups of 4 input features; k = alpha / r
QN, QP = -8, 7


def operands(seed=0, dtype=torch.float64, zero_b=False):
    """x (2 x 3 x 8), W0 (6 x 8), A (2 x 8), B (6 x 2), per-group s and b (6 x 2); s small enough that some
    weights fall outside the grid (the clamp branch)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, generator=g, dtype=dtype)
    w0 = torch.randn(6, 8, generator=g, dtype=dtype)
    a = torch.randn(2, 8, generator=g, dtype=dtype)
    b = torch.zeros(6, 2, dtype=dtype) if zero_b else torch.randn(6, 2, generator=g, dtype=dtype)
    s = torch.rand(6, 2, generator=g, dtype=dtype) * 0.2 + 0.12
    off = torch.randn(6, 2, generator=g, dtype=dtype) * 0.1
    return [t.requires_grad_() for t in (x, w0, a, b, s, off)]


def ste_quantized(w, s, off, g_scale):
    """LSQ+ (Bhalgat et al. 2020) written with autograd: v = (w - off) / s, Wq = round(clamp(v)) s + off with
    round straight-through and the gradients of s and off scaled by g (LSQ's gradient scale)."""
    def scaled(t):  # value t, gradient g * dt
        return t * g_scale + (t - t * g_scale).detach()

    s_, off_ = scaled(s).repeat_interleave(GROUP, 1), scaled(off).repeat_interleave(GROUP, 1)
    v = ((w - off_) / s_).clamp(QN, QP)
    return (v + (v.round() - v).detach()) * s_ + off_


def test_backward_passes_float64_gradcheck():
    x, w0, a, b, s, off = operands()
    w0.requires_grad_(False)
    q = (((w0 + K * b @ a) - off.repeat_interleave(GROUP, 1)) / s.repeat_interleave(GROUP, 1)).detach()
    inside = ((q >= QN) & (q <= QP)).float().mean()
    assert 0.2 < inside < 0.95  # both branches of the clamp are exercised

    def f(x, a, b, s, off):
        return L4QFunction.apply(x, w0, a, b, s, off, K, BITS, GROUP, 1.0, torch.float64, False)

    assert torch.autograd.gradcheck(f, (x, a, b, s, off), eps=1e-6, atol=1e-7)


def test_backward_equals_autograd_through_the_straight_through_quantizer():
    x, w0, a, b, s, off = operands(seed=1)
    g_scale = 1 / math.sqrt(GROUP * QP)
    dy = torch.randn(2, 3, 6, dtype=torch.float64)
    y = L4QFunction.apply(x, w0.detach(), a, b, s, off, K, BITS, GROUP, g_scale, torch.float64)
    got = torch.autograd.grad(y, (x, a, b, s, off), dy)
    want_y = x @ ste_quantized(w0.detach() + K * b @ a, s, off, g_scale).T
    want = torch.autograd.grad(want_y, (x, a, b, s, off), dy)
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-12)
    for name, g, w in zip(("x", "A", "B", "s", "b"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


def test_with_b_zero_it_is_lsq_on_w0():
    """B = 0 (LoRA's init): the output is x (LSQ+(W0))^T, s and b get LSQ+'s gradients, and A gets none."""
    x, w0, a, b, s, off = operands(seed=2, zero_b=True)
    g_scale = 1 / math.sqrt(GROUP * QP)
    dy = torch.randn(2, 3, 6, dtype=torch.float64)
    y = L4QFunction.apply(x, w0.detach(), a, b, s, off, K, BITS, GROUP, g_scale, torch.float64)
    da, ds, doff = torch.autograd.grad(y, (a, s, off), dy)
    # LSQ+ on W0 alone, by its closed-form gradients (no LoRA anywhere)
    sw, ow = s.detach().repeat_interleave(GROUP, 1), off.detach().repeat_interleave(GROUP, 1)
    v = (w0.detach() - ow) / sw
    wq = v.clamp(QN, QP).round() * sw + ow
    torch.testing.assert_close(y, x.detach() @ wq.T, rtol=0, atol=1e-12)
    gw = dy.reshape(-1, 6).T @ x.detach().reshape(-1, 8)
    inside = (v >= QN) & (v <= QP)
    dwq_ds = torch.where(inside, v.round() - v, v.clamp(QN, QP))
    want_ds = g_scale * (gw * dwq_ds).reshape(6, 2, GROUP).sum(-1)
    want_doff = g_scale * (gw * ~inside).reshape(6, 2, GROUP).sum(-1)
    torch.testing.assert_close(ds, want_ds, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(doff, want_doff, rtol=1e-10, atol=1e-12)
    assert not da.any()


def test_backward_keeps_no_merged_weight_and_w0_gets_no_gradient():
    torch.manual_seed(0)
    layer = L4QLinear(nn.Linear(8, 6), r=2, alpha=4.0, bits=BITS, group=GROUP, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    allowed = {t.data_ptr() for t in (x, *layer.parameters(), *layer.base.parameters())}
    assert saved and all(t.data_ptr() in allowed for t in saved), [tuple(t.shape) for t in saved]
    y.square().sum().backward()
    assert layer.base.weight.grad is None and not layer.base.weight.requires_grad
    assert layer.base.bias.grad is None
    assert all(p.grad is not None and p.grad.any() for p in (layer.lora_A, layer.lora_B, layer.q_scale))


def test_init_covers_both_outliers_without_clipping():
    """L4Q_init: per group s = max(|min W / Q_n|, |max W / Q_p|), b = 0, so every weight lies inside the grid."""
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=False)
    layer = L4QLinear(base, r=2, alpha=4.0, bits=BITS, group=GROUP, gen=torch.Generator().manual_seed(0))
    g = base.weight.detach().reshape(6, 2, GROUP)
    want = torch.maximum((g.amin(-1) / QN).abs(), (g.amax(-1) / QP).abs())
    torch.testing.assert_close(layer.q_scale.detach(), want, rtol=0, atol=0)
    assert not layer.q_offset.any()
    codes = layer.codes()
    assert codes.dtype == torch.int8 and codes.min() >= QN and codes.max() <= QP
    assert ((base.weight.detach() - layer.weight_q()).abs() <= layer.q_scale.detach().repeat_interleave(GROUP, 1) / 2
            + 1e-7).all()  # round to nearest, nothing clipped


def test_exported_integer_model_computes_the_training_forward(tmp_path):
    """The tiny Llama under L4Q in a trained-like state (B, steps and offsets moved off their init), exported and
    loaded onto a plain base: the same logits, bitwise."""
    from tuneforge import registry
    from tuneforge.config.compose import build_specs
    from tuneforge.models.load import load_model
    from tuneforge.peft.base import MethodContext
    from tuneforge.peft.l4q.layer import IntLinear

    specs = build_specs(compose(["recipe=l4q_tiny"]))
    vocab = specs["model"].arch["vocab_size"]
    model = load_model(specs["model"], seed=0, vocab_size=vocab)
    method = registry.build("peft", specs["peft"])
    model = method.apply(model, MethodContext(seed=0))
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # lora_B from 0; scales and offsets by a fraction of a step (some weights clip)
                noise = torch.randn(p.shape, generator=gen)
                p.add_(noise * (0.02 if "lora" in name else 0.3 * model.get_parameter(name.replace("offset", "scale"))))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    method.export(model, tmp_path)
    exported = method.load_export(load_model(specs["model"], seed=0, vocab_size=vocab), tmp_path).eval()
    ints = [m for m in exported.modules() if isinstance(m, IntLinear)]
    assert len(ints) == 14 and all(m.codes.dtype == torch.int8 for m in ints)
    assert not any(isinstance(m, nn.Linear) for n, m in exported.named_modules() if ".layers." in n)
    with torch.no_grad():
        got = exported(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("overrides,fix", [
    (["peft=l4q", "quant=nf4"], "use quant=none"),
    (["peft=l4q", "zero=zero3"], "use zero=zero2"),
    (["peft=l4q", "peft.bits=1"], "bits=1 must be in 2..8"),
])
def test_impossible_combinations_name_the_fix(overrides, fix):
    with pytest.raises(InputError, match=fix):
        compose(overrides)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_cpu_reference():
    """The same layer on CUDA (fp32, TF32 off) gives the CPU's codes, output and gradients (float tolerance)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    layer = L4QLinear(nn.Linear(64, 32), r=4, alpha=8.0, bits=BITS, group=16, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
    x = torch.randn(3, 64)
    runs = []
    for device in ("cpu", "cuda"):
        lay = L4QLinear(nn.Linear(64, 32), r=4, alpha=8.0, bits=BITS, group=16, gen=torch.Generator().manual_seed(0))
        lay.load_state_dict(layer.state_dict())
        lay.to(device)
        xd = x.to(device).requires_grad_()
        y = lay(xd)
        y.square().sum().backward()
        runs.append([t.cpu() for t in (lay.codes(), y, xd.grad, lay.lora_A.grad, lay.lora_B.grad, lay.q_scale.grad,
                                       lay.q_offset.grad)])
    assert torch.equal(runs[0][0], runs[1][0])  # the same integer weights
    for name, a, b in zip(("y", "dx", "dA", "dB", "ds", "db"), runs[0][1:], runs[1][1:]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)
