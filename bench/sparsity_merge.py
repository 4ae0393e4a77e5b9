"""Pruning and merging on SmolLM2-135M (issue 13): what each pruner costs in quality, what recovery gets back,
and what each merge of an addition and a subtraction fine-tune keeps of both.

    .venv/bin/python bench/sparsity_merge.py [--parts sparsity,merge] [--steps 30] [--recipe quickstart] [--record]

Sparsity: for 50% unstructured and 2:4, each pruner (`tuneforge prune model=... prune=<m> out=DIR`, calibrated on
32 windows of 512 tokens of the recipe's training data) is evaluated as pruned, then recovered with PERP
(`peft=perp model.path=DIR`, the same steps for every row). PST (`peft=pst`: sparse fine-tuning from the dense
model to 50%) is a row of its own; the dense row is the base model and its LoRA fine-tune. Columns: the pruned
linears' measured sparsity, held-out perplexity (exp of the eval loss on the recipe's held-out problems: answer
tokens) and exact match, before and after recovery.

Merge: one run on addition problems, one on subtraction (`data.ops=[+]`, `[-]`) and one multi-task run on both,
the same steps each; every merge method (`tuneforge merge add sub merge=<m>`, default coefficients, no search) is
evaluated per task on the held-out problems of both operations, beside the single and multi-task runs.
Every model is evaluated the same way, in this process (`tuneforge.runner.offline.evaluator`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cli, read, show, train  # noqa: E402
from peft_compare import record  # noqa: E402

PRUNERS = ["magnitude", "wanda", "sparsegpt", "dsnot"]
PATTERNS = {"50% unstructured": ["prune.sparsity=0.5"], "2:4": ["prune.sparsity=0.5", "prune.pattern=2:4"]}
# 32 windows of 512 tokens (~16k of the recipe's ~80k training tokens), as in selection_compare's PASER table: on a
# 2-core CPU each prune then takes minutes (128 windows, the pruners' default, took >20 CPU-min per pruner)
CALIBRATION = ["prune.n_samples=32", "prune.seqlen=512"]
MERGES = ["task_arithmetic", "ties", "dare", "pcb", "lines"]
BOTH = ["data.ops=[+,-]", "data.tasks=[add,sub]"]  # held-out problems of both operations, scored per task


def evaluate(model_dir: Path | None, recipe: str, overrides: list[str]) -> dict:
    """The eval row (loss, exact match, per task with data.tasks) of a Hugging Face model directory (None: the
    recipe's own base model) on the recipe's held-out data."""
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import load_model, load_tokenizer
    from tuneforge.runner.offline import evaluator

    path = [f"model.path={model_dir}", "model.init=pretrained"] if model_dir else []
    specs = build_specs(compose([f"recipe={recipe}", *path, *overrides]))
    tok = load_tokenizer(specs["model"])
    model = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(tok)).eval()
    return evaluator(specs, tok)(model)


def ppl_em(row: dict) -> tuple[str, str]:
    return f"{math.exp(row['eval_loss']):.2f}", f"{row.get('exact_match', float('nan')):.0%}"


def sparsity(args, tmp: Path) -> list[list]:
    rec = [f"trainer.max_steps={args.steps}", "trainer.eval_at_start=false"]
    dense = ppl_em(evaluate(None, args.recipe, []))
    s, _ = read(train(f"recipe={args.recipe}", "peft=lora", *rec))
    rows = [["dense", "-", "0%", *dense, "LoRA", *ppl_em(s["eval"])]]
    for pattern, po in PATTERNS.items():
        for m in PRUNERS:
            out = tmp / f"{m}-{pattern.split()[0].replace(':', 'of').replace('%', '')}"
            cli("prune", f"recipe={args.recipe}", f"prune={m}", *po, *CALIBRATION, f"out={out}")
            measured = json.loads((out / "sparsity.json").read_text())["sparsity"]
            pruned = ppl_em(evaluate(out, args.recipe, []))
            run = train(f"recipe={args.recipe}", f"model.path={out}", "model.init=pretrained", "peft=perp", *rec)
            s, _ = read(run)
            rows.append([pattern, m, f"{measured:.1%}", *pruned, "PERP", *ppl_em(s["eval"])])
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        if pattern.endswith("unstructured"):  # PST learns an unstructured mask while it fine-tunes the dense model
            s, _ = read(train(f"recipe={args.recipe}", "peft=pst", "peft.sparsity=0.5", *rec))
            rows.append([pattern, "pst (in training)", "50.0%", "-", "-", "PST", *ppl_em(s["eval"])])
    return rows


def merge(args, tmp: Path) -> list[list]:
    rec = [f"trainer.max_steps={args.steps}", "trainer.eval_at_start=false"]
    runs = {"add": ["data.ops=[+]"], "sub": ["data.ops=[-]"], "multi-task": BOTH}
    dirs = {}
    for name, ops in runs.items():
        dirs[name] = train(f"recipe={args.recipe}", "peft=lora", *ops, *rec)
        cli("export", f"run_dir={dirs[name]}")
    rows = []

    def row(label, model_dir):
        r = evaluate(model_dir, args.recipe, BOTH)
        rows.append([label, f"{r['exact_match/add']:.0%}", f"{r['exact_match/sub']:.0%}", f"{r['exact_match']:.0%}",
                     f"{r['eval_loss']:.3f}"])

    for name, d in dirs.items():
        row(f"{name} run", d / "export")
    for m in MERGES:
        out = tmp / f"merge-{m}"
        cli("merge", str(dirs["add"]), str(dirs["sub"]), f"recipe={args.recipe}", f"merge={m}", f"out={out}")
        row(f"merge={m}", out)
        shutil.rmtree(out, ignore_errors=True)
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    return rows


SPARSITY_COLUMNS = ["pattern", "pruner", "sparsity", "ppl pruned", "exact match pruned", "recovery",
                    "ppl after", "exact match after"]
MERGE_COLUMNS = ["model", "exact match add", "exact match sub", "both", "eval loss (both)"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="sparsity,merge", help="sparsity, merge or both")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of every training run")
    ap.add_argument("--recipe", default="quickstart", help="recipe every run uses (quickstart_tiny: smoke test)")
    ap.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-bench-sparsity-"))
    command = "bench/sparsity_merge.py " + " ".join(sys.argv[1:])
    if "sparsity" in args.parts:
        rows = sparsity(args, tmp)
        title = f"pruning and recovering (recipe={args.recipe}, {args.steps} steps)"
        show(title, SPARSITY_COLUMNS, rows)
        if args.record:
            record(title, command, rows, SPARSITY_COLUMNS)
    if "merge" in args.parts:
        rows = merge(args, tmp)
        title = f"merging an addition and a subtraction fine-tune (recipe={args.recipe}, {args.steps} steps each)"
        show(title, MERGE_COLUMNS, rows)
        if args.record:
            record(title, command, rows, MERGE_COLUMNS)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
