"""Data selection on a noisy pool: every selector keeps 20% of the same pool, the same model trains the same steps
on what it kept, and the table shows what each kept and what the model learned.

    .venv/bin/python bench/selection_compare.py [--methods random,loss,...] [--pool 1000] [--keep 0.2]
                                               [--steps 30] [--recipe quickstart] [--record]
                                               [key=value ...]

The pool (written in code, identical for a given --seed) mixes clean quickstart problems with planted noise:
- `wrong`: a quickstart problem whose answer is off by 1-9;
- `dup`: copies of a few clean problems (each repeated many times);
- `off-task`: a question about something else with a non-numeric answer.
Eval is on 100 clean held-out problems (disjoint from the pool). Every row trains `recipe=quickstart` (SmolLM2-135M,
LoRA) for `--steps` steps on its selection; the `all` row trains on the whole pool. Columns: the share of each kind
in the final selection (the last re-selection, for a dynamic method), exact match and eval loss after training, the
selection's own cost in seconds (summary.json's phase_s.selection: the initial choice and every re-selection) and
the run's wall time. Methods that need another model or axis get it from NEEDS.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402
from peft_compare import record  # noqa: E402

from tuneforge.data.quickstart import problem  # noqa: E402

KINDS = ("clean", "wrong", "dup", "off-task")
SHARE = {"wrong": 0.15, "dup": 0.15, "off-task": 0.10}  # the rest is clean
OFF_TASK = [("What colour is the sky on a clear day?", "Blue."), ("Name a city in France.", "Paris."),
            ("Which animal says moo?", "A cow."), ("Translate 'hello' into Spanish.", "Hola."),
            ("What do bees make?", "Honey."), ("Give a synonym for happy.", "Glad."),
            ("What is the opposite of cold?", "Hot."), ("Which season comes after winter?", "Spring.")]
# Selection options and their settings (the key is the table row; the value the overrides).
METHODS = {
    "all": ["selection=none"],
    "random": ["selection=random"],
    "loss (high)": ["selection=loss", "selection.keep=high"],
    "loss (low)": ["selection=loss", "selection.keep=low"],
    "perplexity (low)": ["selection=perplexity"],
    "mates": ["selection=mates", "selection.reselect_every=10"],
    "middo": ["selection=middo"],
}
# Not rows here, and why: preselect needs >= 3 scoring models with a benchmark ranking (one real model ships);
# skillit needs skills (data.tasks), which this pool does not label; paser recovers a *pruned* model, so its
# run would not train the same model as the others.
FRACTION = {"all": None}  # rows that keep everything


def write_pool(out: Path, n: int, seed: int) -> tuple[Path, Path, list[str]]:
    """pool.jsonl (n rows, with planted noise) and eval.jsonl (100 clean problems not in the pool); the kinds."""
    rng = random.Random(seed)
    seen, evals = set(), []
    while len(evals) < 100:
        key, ex = problem(rng, 2, ["+"])
        if key not in seen:
            seen.add(key)
            evals.append(ex)

    def clean():
        while True:
            key, ex = problem(rng, 2, ["+"])
            if key not in seen:
                return ex.messages[0]["content"], ex.answer

    counts = {k: round(n * s) for k, s in SHARE.items()}
    kinds = ["clean"] * (n - sum(counts.values())) + [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    originals = [clean() for _ in range(5)]
    rows = []
    for kind in kinds:
        if kind == "clean":
            q, a = clean()
        elif kind == "wrong":
            q, a = clean()
            a = str(int(a) + rng.choice([-1, 1]) * rng.randint(1, 9))
        elif kind == "dup":
            q, a = rng.choice(originals)
        else:
            q, a = rng.choice(OFF_TASK)
        rows.append({"prompt": q, "response": a, "answer": a, "kind": kind})
    pool, ev = out / "pool.jsonl", out / "eval.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.write_text("".join(json.dumps({"prompt": e.messages[0]["content"], "response": e.answer, "answer": e.answer})
                          + "\n" for e in evals))
    return pool, ev, kinds


def final_choice(run_dir: Path) -> list[int] | None:
    """The selection the run ended with: its last re-selection, else its initial choice."""
    steps = sorted(run_dir.glob("selection/step_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if steps:
        return json.loads(steps[-1].read_text())["chosen"]
    first = run_dir / "selection/selected.json"
    return json.loads(first.read_text())["chosen"] if first.is_file() else None


def measure(name: str, overrides: list[str], data: list[str], kinds: list[str], args) -> list:
    frac = [] if name in FRACTION else [f"selection.fraction={args.keep}"]
    try:
        run_dir = train(f"recipe={args.recipe}", *data, *overrides, *frac, f"trainer.max_steps={args.steps}",
                        "trainer.eval_at_start=false")
        s, _ = read(run_dir)
        chosen = final_choice(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    except SystemExit as e:  # one failing method is reported in its row; the others still run
        print(e, file=sys.stderr)
        return [name, "failed", *["-"] * 8]
    chosen = range(len(kinds)) if chosen is None else chosen
    mix = [sum(kinds[i] == k for i in chosen) for k in KINDS]
    after = s.get("eval", {})
    return [name, len(chosen), *(f"{100 * c / max(len(chosen), 1):.0f}%" for c in mix),
            f"{after.get('exact_match', float('nan')):.1%}", f"{after.get('eval_loss', float('nan')):.3f}",
            f"{s['phase_s'].get('selection', 0.0):.1f}", f"{s['wall_time_s']:.0f}"]


COLUMNS = ["selection", "kept", *(f"{k} %" for k in KINDS), "exact match", "eval loss", "selection s", "run wall s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None, help=f"comma-separated rows (default: all of {', '.join(METHODS)})")
    ap.add_argument("--pool", type=int, default=1000, help="rows in the pool")
    ap.add_argument("--keep", type=float, default=0.2, help="share of the pool each selector keeps")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per row (batch 16: 480 samples)")
    ap.add_argument("--recipe", default="quickstart", help="recipe every row trains (quickstart_tiny: smoke test)")
    ap.add_argument("--seed", type=int, default=0, help="pool generator seed")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args()
    names = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown rows {unknown}: choose from {', '.join(METHODS)}")
    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-bench-selection-"))
    pool, ev, kinds = write_pool(tmp, args.pool, args.seed)
    data = ["data=jsonl", f"data.path={pool}", f"data.eval_path={ev}", "data.answer_field=answer",
            "data.checker=number", "data.max_length=128", "data.system_prompt=Answer with the number only.",
            *args.overrides]
    rows = [measure(m, METHODS[m], data, kinds, args) for m in names]
    shutil.rmtree(tmp, ignore_errors=True)
    title = f"selection on a noisy pool ({args.pool} rows: {', '.join(f'{k} {v:.0%}' for k, v in SHARE.items())}; " \
            f"keep {args.keep:.0%}, {args.steps} steps)"
    show(title, COLUMNS, rows)
    if args.record:
        record(title, "bench/selection_compare.py " + " ".join(sys.argv[1:]), rows, COLUMNS)


if __name__ == "__main__":
    main()
