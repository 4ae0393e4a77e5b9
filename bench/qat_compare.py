"""Quantization-aware training methods side by side on SmolLM2-135M with the quickstart recipe's data: held-out
perplexity (eval loss on the quickstart eval split) and quickstart accuracy (exact match), per method and bits.

    nice -n 15 .venv/bin/python bench/qat_compare.py                 # every row at 4 and 2 bits
    nice -n 15 .venv/bin/python bench/qat_compare.py --bits 4 --rows efficientqat-rtn

Each entry of RUNS is one `tuneforge train` of the quickstart recipe (it evaluates before and after training);
it gives the table two rows: `before` (the quantized model as built, e.g. round-to-nearest or Block-AP) and
`after` (after the run's training, e.g. E2E-QP). To add a method, add one entry: its overrides (a function of the
bit width) and the labels of its two rows (None: leave that row out). Calibration and training are reduced from
the papers' so that each run takes a few minutes on 2 CPU cores; the numbers are stated in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402

STEPS = 15  # E2E-QP steps (of 16 samples): the reference trains 4096 samples of 2048 tokens
# Block-AP reduced: 8 windows of 128 tokens, 2 epochs per block (reference: 4096 x 2048, 2 epochs)
EQAT = ["quant=efficientqat", "peft=e2e_qp", "quant.group_size=64", "quant.samples=8", "quant.val_samples=0",
        "quant.seqlen=128", "optim.lr=1e-4", "optim.grad_clip=0.3"]

# name -> (overrides for a bit width, label of the `before` row, label of the `after` row)
RUNS = {
    "efficientqat-rtn": (lambda b: [*EQAT, f"quant.bits={b}", "quant.epochs=0"],
                         "round-to-nearest", "round-to-nearest + E2E-QP"),
    "efficientqat": (lambda b: [*EQAT, f"quant.bits={b}"], "Block-AP", "Block-AP + E2E-QP"),
}
COMMON = ["recipe=quickstart", "model=smollm2_135m", f"trainer.max_steps={STEPS}", "trainer.save_every=0",
          "data.n_eval=50", "trainer.threads=1"]  # one thread: a shared 2-core machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, nargs="*", default=[4, 2])
    ap.add_argument("--rows", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    table = []
    for bits in args.bits:
        for name in args.rows:
            make, before, after = RUNS[name]
            t0 = time.time()
            s, _ = read(train(*COMMON, *make(bits), *args.overrides))
            phases = s["phase_s"]
            for label, ev in ((before, s["eval_before"]), (after, s["eval"])):
                if label is not None:
                    table.append([bits, label, f"{math.exp(ev['eval_loss']):.2f}", f"{ev['exact_match']:.1%}",
                                  f"{phases['build_model']:.0f}", f"{phases['train']:.0f}", f"{time.time() - t0:.0f}"])
    show("QAT on SmolLM2-135M (quickstart data)", ["bits", "method", "held-out ppl", "exact match",
                                                    "build (calibration) s", "train s", "run wall s"], table)


if __name__ == "__main__":
    main()
