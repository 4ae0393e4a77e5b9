"""Merge methods against independent computations written here from the papers' equations (hand-built vectors),
LiNeS's block scaling and adapter deltas through the real merge loop on a tiny Llama."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import InputError
from tuneforge.merge.dare.apply import Dare
from tuneforge.merge.dare.spec import DareSpec
from tuneforge.merge.lines.spec import LinesSpec
from tuneforge.merge.merge import merge_models
from tuneforge.merge.pcb.apply import Pcb
from tuneforge.merge.pcb.spec import PcbSpec
from tuneforge.merge.task_arithmetic.spec import TaskArithmeticSpec
from tuneforge.merge.ties.apply import Ties
from tuneforge.merge.ties.spec import TiesSpec

TAUS = [[0.5, -0.1, 0.3, -0.8], [-0.4, 0.2, 0.6, -0.9], [0.2, -0.7, -0.05, 0.3]]


def ties_by_hand(taus: list[list[float]], k: int) -> list[float]:
    """TIES (Yadav et al., Alg. 1): keep each task's k largest |tau|, elect the sign of the summed trimmed values,
    average the trimmed values that agree with it."""
    trimmed = []
    for tau in taus:
        kept = sorted(range(len(tau)), key=lambda i: -abs(tau[i]))[:k]
        trimmed.append([v if i in kept else 0.0 for i, v in enumerate(tau)])
    out = []
    for p in range(len(taus[0])):
        sign = 1.0 if sum(t[p] for t in trimmed) >= 0 else -1.0
        agree = [t[p] for t in trimmed if t[p] != 0 and math.copysign(1.0, t[p]) == sign]
        out.append(sum(agree) / len(agree) if agree else 0.0)
    return out


def test_ties_matches_a_hand_computation():
    want = ties_by_hand(TAUS, k=2)
    assert want == pytest.approx([0.5, -0.7, 0.6, -0.85])  # worked on paper: entry 3 averages -0.8 and -0.9
    got = Ties(TiesSpec(density=0.5)).combine(torch.tensor(TAUS))
    torch.testing.assert_close(got, torch.tensor(want))


def test_dare_preserves_the_expectation():
    """E[(m ⊙ tau) / (1 - p)] = tau, m ~ Bernoulli(1 - p): the mean over many seeds is the plain sum."""
    taus, p, seeds, copies = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.0, 0.0]]), 0.5, 200, 50
    dare, total = Dare(DareSpec(p=p)), torch.zeros(4)
    for seed in range(seeds):  # each seed draws `copies` independent masks of every entry
        torch.manual_seed(seed)
        total += dare.combine(taus[:, None, :].expand(2, copies, 4).contiguous()).sum(0)
    draws = seeds * copies
    mean, std = total / draws, (taus.pow(2).sum(0) * p / (1 - p)).sqrt() / math.sqrt(draws)
    assert ((mean - taus.sum(0)).abs() <= 4 * std + 1e-6).all(), (mean, taus.sum(0))
    torch.manual_seed(0)
    one = dare.combine(taus[:1])  # one draw: survivors rescaled by exactly 1/(1-p), the rest dropped
    assert set(one.tolist()) <= {0.0, *(v / (1 - p) for v in taus[0].tolist())}


def pcb_by_hand(taus: list[list[float]], r: float) -> list[float]:
    """PCB (Du et al., Eq. 3-7, the released code's forms, no outlier clamp): beta_i = exp(n * Norm(|tau_i|)^2) *
    tanh(tau_i * sum_j tau_j), kept on each task's top round(r d) entries (clipped at 0), tau_m = sum beta tau /
    sum beta."""
    n, d = len(taus), len(taus[0])
    betas = []
    for tau in taus:
        lo, hi = min(map(abs, tau)), max(map(abs, tau))
        beta = [math.exp(n * ((abs(v) - lo) / (hi - lo)) ** 2) * math.tanh(v * sum(t[p] for t in taus))
                for p, v in enumerate(tau)]
        top = sorted(range(d), key=lambda p: -beta[p])[:round(r * d)]
        betas.append([max(b, 0.0) if p in top else 0.0 for p, b in enumerate(beta)])
    out = []
    for p in range(d):
        w = sum(b[p] for b in betas)
        out.append(sum(b[p] * t[p] for b, t in zip(betas, taus)) / w if w > 0 else 0.0)
    return out


def test_pcb_one_task_keeping_everything_is_task_arithmetic():
    tau = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    got = Pcb(PcbSpec(ratio=1.0, clamp=0.0)).combine(tau[None])
    torch.testing.assert_close(got, tau, rtol=1e-6, atol=0)


def test_pcb_matches_a_hand_computation():
    got = Pcb(PcbSpec(ratio=0.5, clamp=0.0)).combine(torch.tensor(TAUS))
    torch.testing.assert_close(got, torch.tensor(pcb_by_hand(TAUS, 0.5)), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tuned(tiny_model_factory, tmp_path_factory):
    """A tiny Llama base and two fine-tunes of it (every weight moved by seeded noise) saved as HF directories."""
    base, tmp_path = tiny_model_factory(0), tmp_path_factory.mktemp("tuned")
    dirs = []
    for seed in (1, 2):
        model = copy.deepcopy(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.save_pretrained(tmp_path / f"ft{seed}")
        dirs.append(tmp_path / f"ft{seed}")
    return base, dirs


def merged_params(tmp_path, base, dirs, spec, name):
    merge_models(copy.deepcopy(base), None, [(d, None) for d in dirs], spec, tmp_path / name, log=lambda _: None)
    return load_file(str(tmp_path / name / "model.safetensors"))


def test_lines_scales_each_block_and_beta_zero_is_uniform(tmp_path, tuned):
    base, dirs = tuned  # each merge writes into a copy; `base` stays the reference
    fts = [load_file(str(d / "model.safetensors")) for d in dirs]
    plain = {n: p.detach() for n, p in base.named_parameters()}
    alpha = 0.3
    for beta in (0.0, 0.6):  # beta = 0: every parameter scaled by alpha (uniform scaling, task arithmetic)
        got = merged_params(tmp_path, base, dirs, LinesSpec(alpha=alpha, beta=beta), f"lines{beta}")
        for n, w in plain.items():
            layer = int(n.split(".layers.")[1].split(".")[0]) if ".layers." in n else None  # 2 blocks: 0 and 1
            lam = alpha if layer is None else alpha + beta * layer / (2 - 1)
            torch.testing.assert_close(got[n], w + lam * sum(ft[n] - w for ft in fts), rtol=1e-5, atol=1e-6)


def lora_adapter(model, path, seed):
    """A saved PEFT LoRA adapter of `model` with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(str(path))
    return load_file(str(path / "adapter_model.safetensors"))


def test_adapters_merge_on_their_full_delta(tmp_path, tuned):
    """The merged weight is W + lam * sum_t s B_t A_t; averaging A and B separately would give another one."""
    base = tuned[0]
    adapters = [lora_adapter(copy.deepcopy(base), tmp_path / f"a{i}", seed=i) for i in (1, 2)]
    merge_models(copy.deepcopy(base), None, [(tmp_path / "a1", None), (tmp_path / "a2", None)],
                 TaskArithmeticSpec(lam=0.5), tmp_path / "out", log=lambda _: None)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    w = dict(base.named_parameters())
    s, name = 4 / 2, "model.layers.1.self_attn.q_proj"
    key = f"base_model.model.{name}.lora_{{}}.weight"
    a, b = [ad[key.format("A")] for ad in adapters], [ad[key.format("B")] for ad in adapters]
    on_deltas = w[f"{name}.weight"] + 0.5 * sum(s * b[t] @ a[t] for t in range(2))
    on_factors = w[f"{name}.weight"] + s * (0.5 * (b[0] + b[1])) @ (0.5 * (a[0] + a[1]))
    torch.testing.assert_close(got[f"{name}.weight"], on_deltas, rtol=1e-5, atol=1e-6)
    assert (on_deltas - on_factors).abs().max() > 1e-2  # the two answers differ, the tool gives the first
    torch.testing.assert_close(got["model.layers.1.self_attn.k_proj.weight"], w["model.layers.1.self_attn.k_proj.weight"])


def test_inputs_of_another_base_fail_with_every_mismatch(tmp_path, tiny_model_factory, tuned):
    base, dirs = tuned
    tiny_model_factory(0, "model.arch.intermediate_size=96").save_pretrained(tmp_path / "wide")
    for i, origin in ((1, "org/base-a"), (2, "org/base-b")):
        lora_adapter(copy.deepcopy(base), tmp_path / f"a{i}", seed=i)
        cfg = json.loads((tmp_path / f"a{i}" / "adapter_config.json").read_text())
        (tmp_path / f"a{i}" / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": origin}))
    inputs = [(tmp_path / "a1", None), (tmp_path / "a2", None), (dirs[0], None), (tmp_path / "wide", None)]
    with pytest.raises(InputError) as e:
        merge_models(copy.deepcopy(base), None, inputs, TiesSpec(), tmp_path / "out", log=lambda _: None)
    text = e.value.render()
    assert "input 2" in text and "tuned from 'org/base-b', but input 1 from 'org/base-a'" in text, text
    assert "input 4" in text and "intermediate_size=96, but the base has intermediate_size=128" in text, text
    assert "mlp.down_proj.weight has shape [64, 96], the base [64, 128]" in text, text
    assert "input 3" not in text and not (tmp_path / "out").exists()
