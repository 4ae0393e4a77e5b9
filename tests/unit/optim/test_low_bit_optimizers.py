"""The low-bit and paged AdamW options (tuneforge/optim/optimizers.py): torchao's 8-bit and 4-bit moments are the
exact AdamW moments up to block-wise rounding, a run with them resumes exactly from a checkpoint (in this process,
tiny_llama), and the paged bitsandbytes variants are refused on the CPU with the fix named before anything loads."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import train_here
from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError

TINY = ["recipe=quickstart_tiny", "peft=lora", "peft.r=64", "trainer.eval_at_start=false", "data.n_eval=2",
        "trainer.max_new_tokens=2", "trainer.threads=1", "trainer.max_steps=3", "trainer.save_every=2",
        "optim.compile=false"]  # r=64: LoRA's 64x64 factors have 4096 elements, the least torchao quantizes


@pytest.mark.parametrize("name,bits", [("ao_adamw8bit", 8), ("ao_adamw4bit", 4)])
def test_torchao_moments_are_adamw_moments_rounded_per_block(name, bits):
    """Two steps on a 64x64 weight: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2 written out here; the stored
    moments are 2^bits-level codes per block of `block_size`, scaled by the block's largest |moment|: each
    dequantized value lies within the codebook's worst rounding error (times that scale) of the exact moment."""
    spec = build_specs(compose([f"optim={name}", "optim.compile=false", "optim.lr=1e-3"]))["optim"]
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 64))
    opt = registry.build("optim", spec).build([{"params": [w]}])
    b1, b2 = spec.betas
    m, v = torch.zeros(64, 64), torch.zeros(64, 64)
    for _ in range(2):  # each step: m <- round(b1 m + (1 - b1) g) with m the dequantized stored moment; v likewise
        w.grad = torch.randn(64, 64)
        m, v = b1 * m + (1 - b1) * w.grad, b2 * v + (1 - b2) * w.grad**2
        opt.step()
        state = opt.state[w]
        for stored, exact in ((state["exp_avg"], m), (state["exp_avg_sq"], v)):
            assert type(stored).__name__ == f"OptimState{bits}bit" and stored.block_size == spec.block_size
            assert stored.qmap.numel() == 2**bits
            levels = stored.qmap.sort().values  # the codebook on [-1, 1] (signed) or [0, 1]: round to nearest
            worst = max(levels.diff().max() / 2, levels.abs().min(), 1 - levels.max())
            blocks, got = (t.flatten().view(-1, spec.block_size) for t in (exact, stored.dequantize()))
            scale = blocks.abs().amax(dim=1, keepdim=True)
            assert ((got - blocks).abs() <= worst * scale * (1 + 1e-4)).all()  # 1e-4: float rounding at ties
        m, v = state["exp_avg"].dequantize(), state["exp_avg_sq"].dequantize()


def moments(run, step):
    from tuneforge.runner.checkpoint import _allowed

    [f] = (run / "checkpoints" / f"step_{step}").rglob("mp_rank_00_model_states.pt")
    with torch.serialization.safe_globals(_allowed()):
        state = torch.load(f, map_location="cpu", weights_only=True)["optimizer"]["state"]
    return [t.dequantize() if hasattr(t, "dequantize") else t for s in state.values() for t in s.values()], \
        sum(type(t).__name__.startswith("OptimState") for s in state.values() for t in s.values())


@pytest.mark.parametrize("name", ["ao_adamw8bit", "ao_adamw4bit"])
def test_torchao_optimizer_resumes_exactly(tmp_path, name):
    """3 steps straight vs 2 steps, a checkpoint, then a resume from it: the same loss at step 3 (bitwise), the same
    trained weights and the same low-bit optimizer states at the end."""
    from safetensors.torch import load_file

    ref = train_here(*TINY, f"optim={name}", out=tmp_path / "ref")
    run = train_here(*TINY, f"optim={name}", f"trainer.resume={ref / 'checkpoints' / 'step_2'}", out=tmp_path / "run")
    losses = [[json.loads(ln)["loss"] for ln in (r / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
              for r in (ref, run)]
    assert losses[1] == losses[0][2:], losses
    a, b = (load_file(str(r / "final" / "trainable.safetensors")) for r in (ref, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (sa, n_low), (sb, _) = moments(ref, 3), moments(run, 3)
    assert n_low > 0 and len(sa) == len(sb) and all(torch.equal(x, y) for x, y in zip(sa, sb))


@pytest.mark.parametrize("name", ["paged_adamw8bit", "paged_adamw32bit"])
def test_paged_optimizers_are_refused_on_cpu_with_the_fix(name):
    with pytest.raises(InputError) as e:
        compose(["recipe=quickstart_tiny", f"optim={name}", "trainer.device=cpu"])
    text = e.value.render()
    assert f"optim={name} needs a CUDA device" in text and "trainer.device=cuda), or use optim=adamw" in text, text


def test_torchao_states_are_refused_to_methods_that_carry_optimizer_state():
    """LISA hands each parameter's Adam state across engine rebuilds (a copy), which torchao's state tensors do not
    support (aten.clone is not implemented for them): refused before load, with the fix."""
    with pytest.raises(InputError) as e:
        compose(["recipe=quickstart_tiny", "peft=lisa", "optim=ao_adamw4bit", "zero=zero0"])
    assert "which optim=ao_adamw4bit cannot hand over (torchao's low-bit state tensors cannot be cloned; " \
           "optim=adamw8bit's can): use optim=adamw" in e.value.render(), e.value.render()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["paged_adamw8bit", "paged_adamw32bit", "ao_adamw8bit", "ao_adamw4bit"])
def test_low_bit_and_paged_optimizers_resume_exactly_on_cuda(tmp_path, name):
    """The CUDA paths (paged unified memory; torchao's compiled step): the same exact-resume property as on CPU."""
    from safetensors.torch import load_file

    args = [a for a in TINY if a != "optim.compile=false"] + ["trainer.device=cuda", f"optim={name}"]
    ref = train_here(*args, out=tmp_path / "ref")
    run = train_here(*args, f"trainer.resume={ref / 'checkpoints' / 'step_2'}", out=tmp_path / "run")
    losses = [[json.loads(ln)["loss"] for ln in (r / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
              for r in (ref, run)]
    assert losses[1] == losses[0][2:] and losses[0][-1] < losses[0][0], losses
    a, b = (load_file(str(r / "final" / "trainable.safetensors")) for r in (ref, run))
    assert all(torch.equal(a[k], b[k]) for k in a)
