"""LISA vs LoRA vs full fine-tuning on SmolLM2-135M: peak memory, throughput, and quality at equal steps.

    .venv/bin/python bench/lisa_memory.py [--steps 10] [--quality-steps 30] [--skip-quality] [--layouts "ZeRO-0 x1"]
                                          [key=value ...]

Memory/throughput: the quickstart data, global batch 16 (micro 8), for each method under ZeRO-0 x 1 rank
(grad_accum 2), ZeRO-2 x 2 ranks and ZeRO-3 x 2 ranks. Peak memory is rank 0's peak RSS (CPU) or peak allocated
(GPU). Tokens/s is the median over steps, each step's time including any LISA switch (engine rebuild).
Quality: exact match on the 100 held-out quickstart problems after --quality-steps steps (ZeRO-0, 1 rank).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402

METHODS = {
    "full": ["peft=full", "optim.lr=5e-5"],
    "LoRA r=16 all-linear": ["peft=lora", "peft.r=16"],
    "LISA g=2, E+H trained": ["peft=lisa", "peft.gamma=2", "peft.period=5", "optim.lr=1e-4"],
    "LISA g=2, E+H frozen": ["peft=lisa", "peft.gamma=2", "peft.period=5", "optim.lr=1e-4", "peft.embed=freeze",
                             "peft.head=freeze"],
}
LAYOUTS = {
    "ZeRO-0 x1": ["zero=zero0", "trainer.nproc=1", "trainer.grad_accum=2"],
    "ZeRO-2 x2": ["zero=zero2", "trainer.nproc=2", "trainer.grad_accum=1"],
    "ZeRO-3 x2": ["zero=zero3", "trainer.nproc=2", "trainer.grad_accum=1"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--quality-steps", type=int, default=30)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of: " + ", ".join(LAYOUTS))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    common = ["recipe=quickstart", "trainer.micro_batch_size=8", "trainer.eval_at_start=false", *args.overrides]
    rows = []
    for layout in args.layouts.split(","):
        lay = LAYOUTS[layout]
        for method, m in METHODS.items():
            s, metrics = read(train(*common, *lay, *m, f"trainer.max_steps={args.steps}", "data.n_eval=4"))
            tps = [r["tokens_per_s"] for r in metrics if "tokens_per_s" in r][1:]  # skip the warm-up step
            rows.append([layout, method, f"{s['trainable_params'] / 1e6:.1f}M", f"{s['peak_memory_mb']:,.0f}",
                         f"{statistics.median(tps):.0f}"])
    show("LISA memory and throughput (SmolLM2-135M, global batch 16)",
         ["layout", "method", "trainable", "peak MB (rank 0)", "tokens/s"], rows)
    if args.skip_quality:
        return
    quality = []
    for method, m in METHODS.items():
        s, _ = read(train(*common, *LAYOUTS["ZeRO-0 x1"], *m, f"trainer.max_steps={args.quality_steps}",
                          "trainer.micro_batch_size=16", "trainer.grad_accum=1", "trainer.eval_at_start=true"))
        quality.append([method, args.quality_steps, f"{s['eval_before']['exact_match']:.1%}",
                        f"{s['eval']['exact_match']:.1%}", f"{s['eval']['eval_loss']:.3f}"])
    show(f"quality at equal steps (quickstart task, batch 16, {args.quality_steps} steps)",
         ["method", "steps", "exact match before", "after", "eval loss after"], quality)


if __name__ == "__main__":
    main()
