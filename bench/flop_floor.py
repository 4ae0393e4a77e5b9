"""The matmul work each tool must do on peer_compare's job, and what it means for the tokens/s ratio.

    .venv/bin/python bench/flop_floor.py [--rows 200] [--max-len 512] [--data DIR] [--trl-lora-s S] [--trl-full-s S]

Issue 15 asks tuneforge for 3x TRL's tokens/s with its defaults and 2x with `precision=fp32` on both. This counts
the matrix-multiply FLOPs of one epoch of `bench/peer_compare.py`'s job (SmolLM2-135M, GSM8K, micro-batch 4, LoRA
or full fine-tuning) for each tool, from the model's config and the job's real token counts, and measures this
machine's matmul rate in fp32 and bf16 on the decoder's MLP shape. A tool's floor is its FLOPs at that rate: the
seconds it would take if every matmul ran at the rate and nothing else took time. Printed per kind and dtype:
- the ratio at equal efficiency, `(TRL's floor in fp32) / (tuneforge's floor in its dtype)`: what tuneforge
  reaches if both tools spend the same share of their time outside the measured matmul rate;
- given TRL's measured train seconds from peer_compare (`--trl-lora-s`, `--trl-full-s`), the matmul efficiency
  tuneforge needs for each of the issue's targets, `tuneforge's floor / (TRL's seconds / target)` (the share
  of its time its matmuls would have to fill; 100% or more is out of reach).
What each tool computes (per token; N = the linear layers' weights, r = LoRA's):
- both: the decoder's linear layers forward (2N) and their input gradients (2N), plus their weight gradients
  (2N) for full fine-tuning; LoRA's adapters forward and backward (6r); causal attention within each sample
  (QK^T and PV forward, four products backward);
- TRL: every token of a batch padded to its longest sample, the LM head over all of them (forward and input
  gradient); its padding depends on its shuffle, so the count is the mean over 20 seeded shuffles;
- tuneforge: the real tokens only (unpadded micro-batches, the fillers of `STRETCH_MULTIPLE` counted), the head
  on the answer tokens only, forward and input gradient (`trainer.loss_chunk`: the gradient made in forward).
Elementwise work (norms, rotary, SwiGLU, softmax, casts) is left out for both.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import show  # noqa: E402
from peer_compare import DATA_CANDIDATES, LORA, MICRO, answer_only, gsm8k, smollm2_dir  # noqa: E402


def matmul_rate(dtype, tokens: int = 1024, shape: tuple[int, int] = (576, 1536), reps: int = 40) -> float:
    """GFLOP/s of [tokens, in] x [in, out] on this machine: the best of `reps` (what the cores can do; the
    median moves with whatever else the machine runs)."""
    import torch

    a, w = torch.randn(tokens, shape[0], dtype=dtype), torch.randn(shape[0], shape[1], dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ w
        best = min(best, time.perf_counter() - t0)
    return 2 * tokens * shape[0] * shape[1] / best / 1e9


def model_sizes(cfg) -> dict:
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    d = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    return {"linear": layers * sum(a * b for a, b in shapes),
            "lora": layers * sum(LORA["r"] * (a + b) for a, b in shapes),
            "attn": layers * cfg.num_attention_heads * d,  # per (query, key) pair: q.k and p.v, d each
            "head": h * cfg.vocab_size}


def flops(sizes: dict, lengths: list[int], head_tokens: float, kind: str) -> float:
    """Matmul FLOPs of one epoch: `lengths` are the sequences the decoder runs (padded or not), the head runs on
    `head_tokens`."""
    tokens = sum(lengths)
    linear = (4 if kind == "lora" else 6) * sizes["linear"] * tokens
    lora = 6 * sizes["lora"] * tokens if kind == "lora" else 0
    pairs = sum(n * (n + 1) // 2 for n in lengths)  # causal (query, key) pairs
    attn = 2 * 2 * sizes["attn"] * pairs * 3  # two products forward, four backward
    head = 2 * sizes["head"] * head_tokens * (3 if kind == "full" else 2)  # forward + input grad (+ weight grad)
    return linear + lora + attn + head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--data", type=Path, default=next((p for p in DATA_CANDIDATES if p.is_dir()), None))
    for kind in ("lora", "full"):
        ap.add_argument(f"--trl-{kind}-s", type=float, default=None, help=f"TRL's measured {kind} train seconds")
    args = ap.parse_args()
    if args.data is None:
        sys.exit("GSM8K not found: pass --data DIR (a directory with train.jsonl)")
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from tuneforge.models.unpad import STRETCH_MULTIPLE

    path = smollm2_dir()
    tok, sizes = AutoTokenizer.from_pretrained(path), model_sizes(AutoConfig.from_pretrained(path))
    samples = answer_only(tok, gsm8k(args.data, "train", args.rows), args.max_len)
    lengths = [len(ids) for ids, _ in samples]
    answers = sum(sum(t != -100 for t in lab[1:]) for _, lab in samples)  # next-token targets
    real = sum(lengths)
    padded = []  # TRL: each sample as long as the longest of its micro-batch, over 20 shuffles
    for seed in range(20):
        order = random.Random(seed).sample(lengths, len(lengths))
        padded.append([max(order[i:i + MICRO]) for i in range(0, len(order), MICRO) for _ in order[i:i + MICRO]])
    trl_tokens = sum(map(sum, padded)) / len(padded)
    stretched = [-(-n // STRETCH_MULTIPLE) * STRETCH_MULTIPLE for n in lengths]
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    print(f"{real} real tokens, {answers} answer targets; TRL computes {trl_tokens:.0f} (padding "
          f"{1 - real / trl_tokens:.1%}), tuneforge {sum(stretched)} (fillers {1 - real / sum(stretched):.1%}); "
          f"matmul rate fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")
    rows = []
    targets = {"lora": {"fp32": 2.0, "bf16": 3.0}, "full": {"bf16": 1.5}}  # issue 15
    for kind in ("lora", "full"):
        trl = sum(flops(sizes, p, sum(p), kind) for p in padded) / len(padded)
        ours = flops(sizes, stretched, answers, kind)
        for dtype, rate in (("fp32", fp32), ("bf16", bf16)):
            floor, target = ours / rate / 1e9, targets[kind].get(dtype)
            trl_s = getattr(args, f"trl_{kind}_s")
            needed = f"{floor / (trl_s / target):.0%} for {target:g}x" if trl_s and target else "-"
            rows.append([kind, dtype, f"{trl / real / 1e6:.0f}", f"{ours / real / 1e6:.0f}", f"{trl / ours:.2f}x",
                         f"{trl / fp32 / 1e9:.0f}", f"{floor:.0f}", f"{(trl / fp32) / (ours / rate):.2f}x", needed])
    show("matmul FLOPs of peer_compare's job and the tokens/s ratio they allow",
         ["kind", "tuneforge dtype", "TRL MFLOP / real token", "tuneforge MFLOP / real token", "work ratio",
          "TRL floor s (fp32)", "tuneforge floor s", "ratio at equal efficiency", "efficiency needed"], rows)


if __name__ == "__main__":
    main()
