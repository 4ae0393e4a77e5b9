"""Every tuning method on the same task, data and steps: one table of trainable parameters, peak memory,
throughput and quality (the quickstart task on SmolLM2-135M by default).

    .venv/bin/python bench/peft_compare.py [--methods lora,dora,...] [--steps 30] [--recipe quickstart] [--record]
                                           [key=value ...]

Methods default to every registered `peft` option except full, freeze and lisa (so a new method joins by
registering). Each runs `tuneforge train recipe=<recipe> peft=<m> trainer.max_steps=<steps>` in its own process
(1 rank, ZeRO-0, the recipe's precision) with the method's defaults; methods that need another axis get it from
NEEDS (qlora: quant=nf4). Peak memory is the run's peak RSS (summary.json); tokens/s the median over steps
after the first (metrics.jsonl); exact match on the recipe's held-out problems before and after training (and
after training per task, for a multi-task method such as mtlora).
`--record` appends the table, the command and the machine to bench/RESULTS.md.

`--lrs 1e-4,3e-4,1e-3` sweeps the learning rate: every method runs at each rate and at its paper's recommended
rate where that differs (PAPER_LR), and the table shows the best run of each method (highest exact match, then
lowest eval loss) with every rate's exact match beside it. Each finished run is appended to `--log` (JSON lines),
and a later invocation skips what the log already holds, so a sweep interrupted on a busy machine resumes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, read, show, train  # noqa: E402

EXCLUDED = ("full", "freeze", "lisa")
NEEDS = {"qlora": ["quant=nf4"],  # axes a method cannot run without
         "mtlora": ["data.ops=[+,-]", "data.tasks=[add,sub]"]}  # multi-task data: addition and subtraction problems
SETTINGS = {"corda": ["peft.n_samples=64"]}  # bounded calibration (the default 256 takes ~4x longer on CPU)
# The learning rate each method's released training script uses for LLM fine-tuning, where it differs from the
# sweep's rates (checked against the scripts named, 2026-12-06).
PAPER_LR = {
    "pissa": 2e-5,  # GraphPKU/PiSSA scripts/pissa.sh: LLaMA-2-7B on MetaMathQA, --learning_rate 2e-5
    "corda": 2e-5,  # huggingface/peft examples/corda_finetuning README (the authors' port): --learning_rate 2e-5
    "bone": 2e-5, "miss": 2e-5,  # JL-er/Bone llama/scripts/run_bone.sh: --learning_rate 2e-5 (MiSS is Bone renamed)
    "qlora": 2e-4,  # artidoro/qlora scripts/finetune_llama2_guanaco_7b.sh: --learning_rate 0.0002
    "dora": 2e-4,  # NVlabs/DoRA commonsense_reasoning/llama2_7B_DoRA.sh: --learning_rate 2e-4
    "lst": 3e-3,  # ylsung/Ladder-Side-Tuning seq2seq/scripts/ladder_side_tuning_base.sh: lr=3e-3 (T5-base, GLUE)
}
COLUMNS = ["method", "trainable", "peak RSS MB", "tokens/s (median)", "exact match before", "after",
           "after, per task", "eval loss after", "run wall s"]


def default_methods() -> list[str]:
    from tuneforge import registry

    registry.load_plugins()
    return [m for m in sorted(registry.names("peft")) if m not in EXCLUDED]


def measure(method: str, recipe: str, steps: int, before: bool, overrides: list[str]) -> list:
    try:
        run_dir = train(f"recipe={recipe}", f"peft={method}", *NEEDS.get(method, []), *SETTINGS.get(method, []),
                             f"trainer.max_steps={steps}", f"trainer.eval_at_start={str(before).lower()}", *overrides)
        s, rows = read(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)  # ~0.5-2 GB of checkpoints per run; the numbers are read
    except SystemExit as e:  # one failing method is reported in its row; the others still run
        print(e, file=sys.stderr)
        return [method, "failed", *["-"] * (len(COLUMNS) - 2)]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:] or [0.0]
    before, after = s.get("eval_before", {}), s.get("eval", {})

    def em(row):
        return f"{row['exact_match']:.1%}" if "exact_match" in row else "-"

    per_task = ", ".join(f"{k.partition('/')[2]} {v:.1%}" for k, v in after.items() if k.startswith("exact_match/"))
    return [method, f"{s['trainable_params'] / 1e6:.2f}M ({100 * s['trainable_params'] / s['total_params']:.2f}%)",
            f"{s['peak_memory_mb']:,.0f}", f"{statistics.median(tps):.0f}", em(before), em(after), per_task or "-",
            f"{after.get('eval_loss', float('nan')):.3f}", f"{s['wall_time_s']:.0f}"]


SWEEP_COLUMNS = ["method", "best lr", "exact match (best)", "eval loss", "exact match per lr", "trainable",
                 "peak RSS MB", "tokens/s (median)"]


def sweep(methods: list[str], lrs: list[float], args, log: Path) -> list[list]:
    """Every method at every rate (plus its paper's); one row per method: its best run and each rate's score."""
    done = {(r["method"], r["lr"]): r["row"] for r in map(json.loads, log.read_text().splitlines())} if log.is_file() else {}
    table = []
    for m in methods:
        rates = sorted({*lrs, *([PAPER_LR[m]] if m in PAPER_LR else [])})
        for lr in rates:
            if (m, lr) not in done:
                done[m, lr] = measure(m, args.recipe, args.steps, False, [*args.overrides, f"optim.lr={lr}"])
                with log.open("a") as f:
                    f.write(json.dumps({"method": m, "lr": lr, "row": done[m, lr]}) + "\n")
        runs = [(lr, done[m, lr]) for lr in rates if done[m, lr][1] != "failed"]
        if not runs:
            table.append([m, "failed", *["-"] * (len(SWEEP_COLUMNS) - 2)])
            continue
        score = {lr: (float(r[5].rstrip("%")) if r[5] != "-" else -1.0, -float(r[7])) for lr, r in runs}
        lr, best = max(runs, key=lambda x: score[x[0]])
        table.append([m, f"{lr:g}", best[5], best[7], ", ".join(f"{x:g}: {r[5]}" for x, r in runs), best[1], best[2],
                      best[3]])
    return table


def record(title: str, command: str, rows: list[list], columns: list[str] = COLUMNS) -> None:
    lines = [f"\n## {title} — {datetime.date.today()}\n", f"`{command}`\n", f"Machine: {machine()}\n",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |",
             *("| " + " | ".join(str(x) for x in r) + " |" for r in rows)]
    with open(Path(__file__).parent / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma-separated peft options (default: every registered one "
                                                     f"except {', '.join(EXCLUDED)})")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per method (the quickstart's 30)")
    ap.add_argument("--recipe", default="quickstart", help="recipe every method runs (quickstart_tiny: smoke test)")
    ap.add_argument("--before", action="store_true", help="also evaluate every method before training (every method "
                                                          "starts from the pretrained function, so once is enough)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--lrs", default=None, help="comma-separated learning rates to sweep (plus each paper's rate)")
    ap.add_argument("--log", type=Path, default=Path("peft_sweep.jsonl"), help="--lrs: runs done so far (resumes)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args()
    methods = args.methods.split(",") if args.methods else default_methods()
    if args.lrs:
        rows = sweep(methods, [float(x) for x in args.lrs.split(",")], args, args.log)
        title = f"PEFT methods compared, best of a learning-rate sweep ({args.recipe}, {args.steps} steps)"
        show(title, SWEEP_COLUMNS, rows)
        if args.record:
            record(title, "python bench/peft_compare.py " + " ".join(sys.argv[1:]), rows, SWEEP_COLUMNS)
        return
    rows = [measure(m, args.recipe, args.steps, args.before, args.overrides) for m in methods]
    title = f"PEFT methods compared ({args.recipe}, {args.steps} steps, same data)"
    show(title, COLUMNS, rows)
    if args.record:
        record(title, "python bench/peft_compare.py " + " ".join(sys.argv[1:]), rows)


if __name__ == "__main__":
    main()
