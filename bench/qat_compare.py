"""Quantization-aware training methods side by side on SmolLM2-135M with the quickstart recipe's data: held-out
perplexity (eval loss on the quickstart eval split) and quickstart accuracy (exact match), per method and bits.

    nice -n 15 .venv/bin/python bench/qat_compare.py                 # every row at 4 and 2 bits
    nice -n 15 .venv/bin/python bench/qat_compare.py --bits 4 --rows efficientqat-rtn
    .venv/bin/python bench/qat_compare.py --runs 4:efficientqat:RUN_DIR ...   # tabulate finished runs

Each entry of RUNS is one `tuneforge train` of the quickstart recipe (it evaluates before and after training);
it gives the table two rows: `before` (the quantized model as built, e.g. round-to-nearest or Block-AP) and
`after` (after the run's training, e.g. E2E-QP). To add a method, add one entry: its overrides (a function of the
bit width) and the labels of its two rows (None: leave that row out). Calibration and training are reduced from
the papers' so that each run takes a few minutes on 2 CPU cores; the numbers are stated in bench/RESULTS.md.

Columns: `quickstart ppl` is the perplexity of the answers of the 50 held-out quickstart problems (what the run's
eval reports; the base model has not learned the answer format, so before training it mostly measures
confidence); `text ppl` is the perplexity of tuneforge/data/examples/text.txt (plain prose, never seen in
calibration or training), computed here in fp32 on the model rebuilt from the run directory (the `before` row
without, the `after` row with the trained parameters), and for the unquantized base in the first row.
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


TEXT = Path(__file__).resolve().parents[1] / "tuneforge" / "data" / "examples" / "text.txt"


def text_ppl(model, tok) -> float:
    import torch

    ids = torch.tensor([tok(TEXT.read_text())["input_ids"]])
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


def run_models(run_dir: Path):
    """(tokenizer, model as built, model with the run's trained parameters), rebuilt from the run directory."""
    import torch

    from tuneforge.config.run import Run
    from tuneforge.peft.base import MethodContext
    from tuneforge.runner.model import build
    from tuneforge.runner.offline import rebuild

    run = Run.load(run_dir)
    _, tok, trained, _ = rebuild(run)
    ctx = MethodContext(seed=run.specs["trainer"].seed, tokenizer=tok, run_dir=run.run_dir, specs=run.specs)
    with torch.no_grad():
        built, _ = build(run.specs, tok, ctx)
    return tok, built.eval().float(), trained.float()


def base_row() -> list:
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import load_model, load_tokenizer

    spec = build_specs(compose(COMMON))["model"]
    tok = load_tokenizer(spec)
    model = load_model(spec, seed=42, vocab_size=len(tok)).eval()
    return ["-", "full precision (no quantization)", "-", f"{text_ppl(model, tok):.2f}",
            "-", "-", "-", "-"]


def rows_of(bits: int, before: str | None, after: str | None, run_dir: Path, wall: float) -> list[list]:
    s, _ = read(run_dir)
    tok, built, trained = run_models(run_dir)
    out = []
    for label, ev, model in ((before, s["eval_before"], built), (after, s["eval"], trained)):
        if label is not None:
            out.append([bits, label, f"{math.exp(ev['eval_loss']):.2f}", f"{text_ppl(model, tok):.2f}",
                        f"{ev['exact_match']:.1%}", f"{s['phase_s']['build_model']:.0f}",
                        f"{s['phase_s']['train']:.0f}", f"{wall:.0f}"])
    return out


COLUMNS = ["bits", "method", "quickstart ppl", "text ppl", "exact match", "build (calibration) s", "train s",
           "run wall s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, nargs="*", default=[4, 2])
    ap.add_argument("--rows", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--runs", nargs="*", default=[], metavar="BITS:NAME:RUN_DIR",
                    help="tabulate finished runs instead of training (e.g. 4:efficientqat:/tmp/run)")
    args = ap.parse_args()
    table = [base_row()]
    done = [(int(b), n, Path(d)) for b, n, d in (r.split(":", 2) for r in args.runs)]
    if not done:
        for bits in args.bits:
            for name in args.rows:
                t0 = time.time()
                run_dir = train(*COMMON, *RUNS[name][0](bits), *args.overrides)
                table += rows_of(bits, *RUNS[name][1:], run_dir, time.time() - t0)
    for bits, name, run_dir in done:
        table += rows_of(bits, *RUNS[name][1:], run_dir, read(run_dir)[0]["wall_time_s"])
    show("QAT on SmolLM2-135M (quickstart data)", COLUMNS, table)

if __name__ == "__main__":
    main()
