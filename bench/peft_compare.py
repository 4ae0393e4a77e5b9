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
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, read, show, train  # noqa: E402

EXCLUDED = ("full", "freeze", "lisa")
NEEDS = {"qlora": ["quant=nf4"],  # axes a method cannot run without
         "mtlora": ["data.ops=[+,-]", "data.tasks=[add,sub]"]}  # multi-task data: addition and subtraction problems
SETTINGS = {"corda": ["peft.n_samples=64"]}  # bounded calibration (the default 256 takes ~4x longer on CPU)
COLUMNS = ["method", "trainable", "peak RSS MB", "tokens/s (median)", "exact match before", "after",
           "after, per task", "eval loss after", "run wall s"]


def default_methods() -> list[str]:
    from tuneforge import registry

    registry.load_plugins()
    return [m for m in sorted(registry.names("peft")) if m not in EXCLUDED]


def measure(method: str, recipe: str, steps: int, before: bool, overrides: list[str]) -> list:
    try:
        s, rows = read(train(f"recipe={recipe}", f"peft={method}", *NEEDS.get(method, []), *SETTINGS.get(method, []),
                             f"trainer.max_steps={steps}", f"trainer.eval_at_start={str(before).lower()}", *overrides))
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


def record(title: str, command: str, rows: list[list]) -> None:
    lines = [f"\n## {title} — {datetime.date.today()}\n", f"`{command}`\n", f"Machine: {machine()}\n",
             "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |",
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
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args()
    methods = args.methods.split(",") if args.methods else default_methods()
    rows = [measure(m, args.recipe, args.steps, args.before, args.overrides) for m in methods]
    title = f"PEFT methods compared ({args.recipe}, {args.steps} steps, same data)"
    show(title, COLUMNS, rows)
    if args.record:
        record(title, "python bench/peft_compare.py " + " ".join(sys.argv[1:]), rows)


if __name__ == "__main__":
    main()
