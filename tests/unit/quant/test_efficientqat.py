"""quant=efficientqat, peft=e2e_qp and the gptq export: each defining property against a computation written here
from the paper's equations (arXiv 2407.11062, Eq. 1-2) and GPTQ's packing, never with the method's helpers.

    W^ lies exactly on the grid; Block-AP lowers one block's reconstruction MSE below round-to-nearest;
    after E2E-QP only the step sizes have gradients (and those are Eq. 2's); pack -> unpack -> dequantize equals
    the fake-quantized weights bitwise; the exported model's logits equal the fake-quant model's; and the
    combinations that cannot work are refused before a model loads.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tuneforge.config.compose import build_specs, compose
from tuneforge.errors import InputError

TINY = ["recipe=quickstart_tiny", "quant=efficientqat", "peft=e2e_qp", "quant.group_size=64", "quant.seqlen=32",
        "quant.samples=4", "quant.val_samples=0", "quant.epochs=1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is fastest, and on a shared machine two spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(w: torch.Tensor, bits: int, g: int):
    """Eq. 1-2 with max-min init, written out: (W^, Wq, s, z) per group of g input columns."""
    x = w.reshape(w.shape[0], -1, g)
    mn, mx = x.min(-1, keepdim=True).values, x.max(-1, keepdim=True).values
    s = ((mx - mn) / (2**bits - 1)).clamp(1e-4, 1e4)
    z = torch.round(-mn / s)
    q = torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1)
    return ((q - z) * s).reshape(w.shape), q.reshape(w.shape), s[..., 0], z[..., 0]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_fake_quantized_weights_lie_on_the_grid(bits):
    from tuneforge.quant.efficientqat.quantizer import FakeQuantLinear

    torch.manual_seed(bits)
    lin = nn.Linear(128, 6, bias=False)
    fq = FakeQuantLinear(lin, bits, 64)
    x = torch.eye(128)
    w_hat = fq(x).t()  # the layer's effective weight, read through its forward
    want, q, s, z = grid(lin.weight.detach(), bits, 64)
    assert torch.equal(w_hat, want)
    k = w_hat.reshape(6, 2, 64) / s[..., None] + z[..., None]  # on the grid: an integer level in [0, 2^N - 1]
    assert torch.allclose(k, k.round(), atol=1e-4) and k.round().min() >= 0 and k.round().max() <= 2**bits - 1
    assert len(torch.unique(w_hat.reshape(12, 64)[0])) <= 2**bits
    w_hat.sum().backward()  # straight-through: dW^/dW = 1 where round(W/s)+z is not clamped
    inside = (torch.round(lin.weight / s.repeat_interleave(64, 1)) + z.repeat_interleave(64, 1) >= 0) & \
             (torch.round(lin.weight / s.repeat_interleave(64, 1)) + z.repeat_interleave(64, 1) <= 2**bits - 1)
    assert torch.equal(fq.weight.grad[inside], torch.ones_like(fq.weight.grad[inside]))


def test_block_ap_beats_round_to_nearest_on_one_block():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.quant.efficientqat import block_ap

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    fp_layer = copy.deepcopy(model.model.layers[0])
    ids = torch.randint(0, 256, (8, 32))
    spec = build_specs(compose([*TINY, "quant.bits=2", "quant.samples=8", "quant.epochs=4"]))["quant"]
    block_ap.run(model, spec, ids, ids[:0], None)

    rtn = copy.deepcopy(fp_layer)  # round-to-nearest: every linear's weight replaced by Eq. 1-2 at max-min init
    for m in rtn.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = grid(m.weight.data, 2, 64)[0]
    with torch.no_grad():
        h = model.model.embed_tokens(ids)  # the block's input, computed here
        pos = torch.arange(32)[None].expand(8, -1)
        kw = {"position_embeddings": model.model.rotary_emb(h, pos), "position_ids": pos, "attention_mask": None}
        out = {n: (m(h, **kw)[0] if isinstance(m(h, **kw), tuple) else m(h, **kw))
               for n, m in (("fp", fp_layer), ("rtn", rtn), ("bap", model.model.layers[0]))}
    mse_rtn = (out["rtn"] - out["fp"]).pow(2).mean()
    mse_bap = (out["bap"] - out["fp"]).pow(2).mean()
    assert mse_bap < 0.95 * mse_rtn, (mse_bap, mse_rtn)


def test_block_ap_resumes_from_its_cached_blocks(tmp_path):
    """Each finished block is saved; a second calibration loads the saved ones and recomputes only the missing
    block, to the same bits (its inputs come from the loaded blocks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.quant.efficientqat import block_ap

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    spec = build_specs(compose(TINY))["quant"]
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    runs, logs = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = block_ap.run(LlamaForCausalLM(cfg), spec, ids, ids[:0], tmp_path, logs.append)
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
        (tmp_path / "block_1.safetensors").unlink()
    assert sum("from cache block_0.safetensors" in line for line in logs) == 1
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model, method, batch) of quant=efficientqat + peft=e2e_qp, built the way a run builds them."""
    from tuneforge import registry
    from tuneforge.data.batching import collate
    from tuneforge.data.encode import encode
    from tuneforge.models.load import load_tokenizer
    from tuneforge.peft.base import MethodContext
    from tuneforge.runner.model import build

    specs = build_specs(compose(TINY))
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(0)
    samples = encode(loaded.train[:24], tok, specs["data"], loaded.report)
    ctx = MethodContext(seed=0, tokenizer=tok, train_samples=samples, run_dir=tmp_path_factory.mktemp("eqat"),
                        specs=specs)
    model, method = build(specs, tok, ctx)
    return model, method, collate(samples[:4], tok.pad_token_id)


def test_e2e_qp_gives_gradients_to_the_step_sizes_only(built):
    from tuneforge.models.groupwise import GroupQuantLinear

    model, _, batch = built
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    quantized = {n for n, m in model.named_modules() if isinstance(m, GroupQuantLinear)}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert len(quantized) == 14 and with_grad == {f"{n}.scales" for n in quantized}
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.endswith(".scales"))
    model.zero_grad(set_to_none=True)

    # Eq. 2's gradient: dL/ds[o, j] = sum over group j of dL/dW^[o, i] (Wq - z)[o, i], Wq and z fixed
    m = next(m for m in model.modules() if isinstance(m, GroupQuantLinear))
    x, gy = torch.randn(5, m.in_features, dtype=torch.float64), torch.randn(5, m.out_features, dtype=torch.float64)
    lvl = m.codes.double() - m.zeros.double().repeat_interleave(m.group_size, 1)
    want = ((gy.t() @ x) * lvl).reshape(m.out_features, -1, m.group_size).sum(-1)
    m.double()
    (m(x) * gy).sum().backward()
    m.float()
    torch.testing.assert_close(m.scales.grad.double(), want, rtol=1e-5, atol=1e-8)
    m.scales.grad = None


def autogptq_unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """GPTQ's layout read back value by value: value j of a column sits at bit offset j*bits of the column's
    32-bit little-endian words (3-bit values cross word boundaries: AutoGPTQ's pack loop)."""
    w = [[int(v) & 0xFFFFFFFF for v in col] for col in words.t().tolist()]
    out = torch.zeros(n, len(w), dtype=torch.int64)
    for c, col in enumerate(w):
        stream = sum(v << (32 * i) for i, v in enumerate(col))
        for j in range(n):
            out[j, c] = (stream >> (j * bits)) & (2**bits - 1)
    return out


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_unpack_dequantize_is_bitwise_the_fake_quantized_weight(bits):
    from tuneforge.models.groupwise import GroupQuantLinear
    from tuneforge.quant.efficientqat.gptq import gptq_tensors

    torch.manual_seed(bits)
    out_f, in_f, g = 32, 128, 64
    codes = torch.randint(0, 2**bits, (out_f, in_f))
    zeros = torch.randint(0, 2**bits, (out_f, in_f // g))
    scales = (torch.rand(out_f, in_f // g) * 0.1).half().float()  # fp16-representable, as stored
    m = GroupQuantLinear(codes, zeros, scales, g, bits)
    t = gptq_tensors(m)
    assert t["qweight"].dtype == t["qzeros"].dtype == torch.int32 and t["scales"].dtype == torch.float16
    assert t["qweight"].shape == (in_f * bits // 32, out_f) and t["qzeros"].shape == (in_f // g, out_f * bits // 32)
    assert torch.equal(t["g_idx"], torch.tensor([i // g for i in range(in_f)], dtype=torch.int32))
    q = autogptq_unpack(t["qweight"], bits, in_f).t()  # [out, in]
    z = autogptq_unpack(t["qzeros"].t(), bits, out_f)  # [out, G]
    assert torch.equal(q, codes) and torch.equal(z, zeros)
    s = t["scales"].float().t()
    w = ((q.float().reshape(out_f, -1, g) - z.float()[..., None]) * s[..., None]).reshape(out_f, in_f)
    assert torch.equal(w, m.weight_hat())


def test_exported_gptq_model_gives_the_fake_quant_logits(built, tmp_path):
    from tuneforge.models.groupwise import GroupQuantLinear
    from tuneforge.quant.efficientqat.gptq import load_gptq, save_gptq

    model, _, batch = built
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, GroupQuantLinear):
            m.scales.data = m.scales.data.half().float()  # what the checkpoint stores (fp16)
    save_gptq(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == 64
    assert qc["sym"] is False and qc["desc_act"] is False
    loaded = load_gptq(tmp_path)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"]).logits
        got = loaded(input_ids=batch["input_ids"]).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("overrides,fix", [
    (["peft=lora"], "quant=efficientqat with peft=lora: 4-bit integer bases are trained with peft=e2e_qp"),
    (["peft=qlora"], "quant=efficientqat bases are trained with peft=e2e_qp: use quant=nf4"),
    (["quant=nf4"], "use quant=efficientqat, or peft=qlora"),
    (["quant=none"], "peft=e2e_qp needs a quantized base: add quant=efficientqat"),
    (["zero=zero3"], "use zero=zero2"),
    (["quant.bits=8", "quant.group_size=32"], "bits=8 is not one of 2, 3, 4"),
])
def test_impossible_combinations_are_refused_with_the_fix(overrides, fix):
    with pytest.raises(InputError) as e:
        compose([*TINY, *overrides])
    assert any(fix in p for p in e.value.problems), e.value.render()


def test_group_size_must_divide_the_linears():
    from tuneforge.models.load import peek_config
    from tuneforge.quant.efficientqat import EfficientQAT

    specs = build_specs(compose([*TINY, "quant.group_size=128"]))
    problems = EfficientQAT.check_model(specs["quant"], peek_config(specs["model"]))
    assert problems == ["quant.group_size=128 does not divide the input features of gate_proj (64), k_proj (64), "
                        "o_proj (64), q_proj (64), up_proj (64), v_proj (64): use quant.group_size=64"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_block_ap_on_cuda_matches_the_cpu_reference():
    """The same calibration with each block trained on CUDA ends at the CPU run's integers (up to rounding ties
    and float summation order) and close reconstruction."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.models.groupwise import GroupQuantLinear
    from tuneforge.quant.efficientqat import block_ap

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    spec = build_specs(compose(TINY))["quant"]
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    got = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        got[device] = block_ap.run(LlamaForCausalLM(cfg), spec, ids, ids[:0], None, device=device)
    pairs = [(a, b) for a, b in zip(got["cpu"].modules(), got["cuda"].modules()) if isinstance(a, GroupQuantLinear)]
    assert len(pairs) == 14 and all(b.codes.device.type == "cpu" for _, b in pairs)
    same = sum((a.codes == b.codes).float().mean().item() for a, b in pairs) / len(pairs)
    assert same > 0.999
    for a, b in pairs:
        torch.testing.assert_close(b.scales, a.scales, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gptqmodel_loads_the_export_on_gpu(built, tmp_path):
    """The export loads in GPTQModel (where it installs) and gives our CPU loader's logits."""
    gptqmodel = pytest.importorskip("gptqmodel")
    from tuneforge.quant.efficientqat.gptq import load_gptq, save_gptq

    model, _, batch = built
    save_gptq(copy.deepcopy(model), tmp_path)
    ours = load_gptq(tmp_path)
    with torch.no_grad():
        want = ours(input_ids=batch["input_ids"]).logits
    theirs = gptqmodel.GPTQModel.load(str(tmp_path), device="cuda:0", dtype=torch.float16)
    with torch.no_grad():
        got = theirs(input_ids=batch["input_ids"].cuda()).logits.float().cpu()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
