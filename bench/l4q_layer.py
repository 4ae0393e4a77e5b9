"""Cost of one L4Q linear against a LoRA linear of the same shape: forward + backward time, on CPU.

    .venv/bin/python bench/l4q_layer.py [--in 576] [--out 1536] [--tokens 1024] [--r 16] [--group 64] [--threads 1]

L4Q's backward forms the full weight gradient dy^T x (LoRA never does) and re-runs the quantizer over the weight,
so it costs more per step than LoRA; this measures how much on one SmolLM2-135M MLP shape (576 -> 1536).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _common import show  # noqa: E402

from tuneforge.peft.l4q.layer import L4QLinear  # noqa: E402


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.k = base.requires_grad_(False), alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r) * 0.01)

    def forward(self, x):
        return self.base(x) + self.k * F.linear(F.linear(x, self.lora_A), self.lora_B)


def timed(layer: nn.Module, x: torch.Tensor, reps: int) -> float:
    for i in range(reps + 2):  # two warm-up passes
        if i == 2:
            t0 = time.perf_counter()
        layer(x).square().mean().backward()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--in", dest="n_in", type=int, default=576)
    ap.add_argument("--out", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.tokens, a.n_in, requires_grad=True)
    lora = LoraLinear(nn.Linear(a.n_in, a.out, bias=False), a.r, 2.0 * a.r)
    l4q = L4QLinear(nn.Linear(a.n_in, a.out, bias=False), a.r, 2.0 * a.r, 4, a.group, torch.Generator().manual_seed(0))
    with torch.no_grad():
        l4q.lora_B.normal_(std=0.01)
    rows = [[name, f"{timed(m, x, a.reps):.1f}"] for name, m in (("lora", lora), ("l4q (4-bit)", l4q))]
    rows[1].append(f"{float(rows[1][1]) / float(rows[0][1]):.2f}x")
    rows[0].append("1.00x")
    show(f"one linear {a.n_in} -> {a.out}, {a.tokens} tokens, r={a.r}, group {a.group}, {a.threads} thread(s)",
         ["layer", "forward + backward ms", "vs lora"], rows)


if __name__ == "__main__":
    main()
