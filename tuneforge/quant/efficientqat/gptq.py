"""The GPTQ checkpoint format of a quantized model (what AutoGPTQ / GPTQModel load; the reference's
model_transfer/efficientqat_to_others.py writes it through GPTQModel with format='gptq_v2'), and our own CPU
loader for it.

Per quantized linear (out x in, G = in / group_size groups), beside the model's other tensors:
    <name>.qweight  int32 [in * bits / 32, out]   the codes Wq^T, each column a little-endian bit stream of `bits`
                                                  bits per value (2/4 bits: 16/8 values per word; 3 bits: 32
                                                  values per 3 words, values crossing word boundaries: GPTQ's)
    <name>.qzeros   int32 [G, out * bits / 32]    the zero points, packed the same way along the output dim;
                                                  checkpoint_format gptq_v2 stores z, gptq (v1) stores z - 1
    <name>.scales   fp16  [G, out]                the step sizes
    <name>.g_idx    int32 [in]                    group of each input column (i // group_size; desc_act=False)
config.json carries quantization_config = {quant_method: gptq, bits, group_size, sym: false, desc_act: false,
checkpoint_format (and `format`, its newer GPTQModel name)}; quantize_config.json holds the same for GPTQModel. The other tensors keep their dtype.

Departure: the step sizes are stored in fp16 (GPTQ's format): an exported model computes with fp16-rounded
scales, so its logits equal the fake-quantized model's when that model's scales are fp16-representable (the
tests round them first). v1 (`gptq`) cannot hold a zero point of 0 (stored as -1, the loaders' packed +1
overflows into the next value), hence gptq_v2 by default, as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tuneforge.models.groupwise import GroupQuantLinear, layers

FORMATS = ("gptq_v2", "gptq")


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in [0, 2^bits) along dim 0 -> int32 words [n * bits / 32, cols]: value j of a column at bit
    offset j * bits of its little-endian stream."""
    n, cols = values.shape
    assert n * bits % 32 == 0, f"{n} values of {bits} bits do not fill whole 32-bit words"
    v = values.to(torch.int64) & (2**bits - 1)
    off = torch.arange(n, dtype=torch.int64) * bits
    word, shift = (off // 32)[:, None].expand(n, cols), (off % 32)[:, None]
    out = torch.zeros(n * bits // 32 + 1, cols, dtype=torch.int64)  # one spare word for the spill of the last
    out.scatter_add_(0, word, (v << shift) & 0xFFFFFFFF)
    out.scatter_add_(0, word + 1, v >> (32 - shift))  # bits crossing into the next word (0 when none)
    out = out[:-1]
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def unpack(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of `pack`: int32 [n * bits / 32, cols] -> int64 [n, cols]."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    w = torch.cat([w, torch.zeros_like(w[:1])])
    off = torch.arange(n, dtype=torch.int64) * bits
    word, shift = off // 32, (off % 32)[:, None]
    both = (w[word] >> shift) | (w[word + 1] << (32 - shift))
    return both & (2**bits - 1)


def gptq_tensors(m: GroupQuantLinear, fmt: str = "gptq_v2") -> dict[str, torch.Tensor]:
    zeros = m.zeros.to(torch.int64).t()  # [G, out]
    if fmt == "gptq":
        if (zeros == 0).any():
            raise ValueError("a zero point is 0, which checkpoint_format=gptq (v1, stores z - 1) cannot hold: "
                             "use gptq_v2")
        zeros = zeros - 1
    out = {"qweight": pack(m.codes.t(), m.bits), "qzeros": pack(zeros.t(), m.bits).t().contiguous(),
           "scales": m.scales.detach().t().contiguous().half(),
           "g_idx": torch.arange(m.in_features, dtype=torch.int32) // m.group_size}
    if m.bias is not None:
        out["bias"] = m.bias.detach().clone()
    return out


def from_gptq(t: dict[str, torch.Tensor], bits: int, group_size: int, fmt: str = "gptq_v2") -> GroupQuantLinear:
    out = t["scales"].shape[1]
    n_in = t["qweight"].shape[0] * 32 // bits
    codes = unpack(t["qweight"], bits, n_in).t()
    zeros = unpack(t["qzeros"].t(), bits, out)  # [out, G]
    if fmt == "gptq":
        zeros = (zeros + 1) & (2**bits - 1)
    return GroupQuantLinear(codes, zeros, t["scales"].float().t(), group_size, bits, t.get("bias"))


def quantization_config(bits: int, group_size: int, fmt: str) -> dict:
    """`checkpoint_format` is what transformers and older GPTQModel read, `format` what newer GPTQModel reads."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": False, "desc_act": False,
            "checkpoint_format": fmt, "format": fmt, "pack_dtype": "int32", "true_sequential": True,
            "static_groups": False, "damp_percent": 0.01, "lm_head": False}


@torch.no_grad()
def save_gptq(model: nn.Module, out: Path, fmt: str = "gptq_v2") -> dict:
    """Write `model` (its quantized linears GroupQuantLinear) as a GPTQ checkpoint in `out`: model.safetensors,
    config.json (with quantization_config), quantize_config.json. Returns the quantization_config."""
    from safetensors.torch import save_file

    found = layers(model)
    if not found:
        raise ValueError("the model has no quantized linear layer to pack")
    bits, group = found[0][1].bits, found[0][1].group_size
    quantized = {n for n, _ in found}
    state = {}
    for name, t in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if owner not in quantized:
            state[name] = t.detach().contiguous()
    for name, m in found:
        state.update({f"{name}.{k}": v for k, v in gptq_tensors(m, fmt).items()})
    if getattr(model.config, "tie_word_embeddings", False):  # one copy of tied weights (safetensors refuses two)
        emb = model.get_input_embeddings().weight
        state = {k: v for k, v in state.items() if not (k.endswith("lm_head.weight") and v.data_ptr() == emb.data_ptr())}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    qc = quantization_config(bits, group, fmt)
    config = model.config.to_dict()
    config["quantization_config"] = qc
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (out / "quantize_config.json").write_text(json.dumps(qc, indent=2))
    return qc


@torch.no_grad()
def load_gptq(path: Path) -> nn.Module:
    """A GPTQ checkpoint (asymmetric, desc_act=False) as a Hugging Face model on CPU whose quantized linears are
    GroupQuantLinear (unpacked once; each forward dequantizes (Wq - z) s in fp32)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    qc = raw.pop("quantization_config")
    if qc.get("desc_act") or qc.get("quant_method") != "gptq":
        raise ValueError(f"{path}: only GPTQ checkpoints with desc_act=false load here (got {qc})")
    fmt = qc.get("checkpoint_format", "gptq")
    config = AutoConfig.for_model(**raw)
    model = AutoModelForCausalLM.from_config(config)
    state = load_file(str(path / "model.safetensors"))
    packed = {k.rpartition(".")[0] for k in state if k.endswith(".qweight")}
    linears = {}
    for name in packed:
        t = {k: state.pop(f"{name}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx", "bias") if f"{name}.{k}" in state}
        linears[name] = from_gptq(t, qc["bits"], qc["group_size"], fmt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.rpartition(".")[0] not in packed
               and not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, m in linears.items():
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, m)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
