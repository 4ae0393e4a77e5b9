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
the run's wall time.

Methods that need another model or axis:
- `preselect` scores the pool with 3 models of known benchmark order: the same recipe trained on the whole pool
  for 5, 12 and `--steps` steps (run directories, exported; ranked by their eval loss). Checkpoints of one run
  agree on most documents, so the classifier's labels are the top and bottom 10% by strength
  (`selection.label_share=0.1`). The scoring runs' training is not in the row's `selection s`; the script prints it.
- `--parts paser`: its own table. The recipe's model is pruned once (Wanda, 50%, 32 calibration windows of 512
  tokens), and the pruned model is recovered for `--steps` steps on the whole pool, on random 20% and on PASER's
  20% (original: `--original`).
- `--parts skillit`: its own table. Skill-it mixes skills (data.tasks), which the noisy pool does not label, so it
  trains `--skill-recipe` (quickstart addition + subtraction as two skills) beside the same recipe with a uniform
  mixture (selection=none) and with the identity skills graph; columns are exact match per skill.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cli, read, show, train  # noqa: E402
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
    "preselect": None,  # scorers(): three scoring runs first
}
PRESELECT_STEPS = (5, 12)  # the scoring runs' steps, besides --steps
CALIBRATION = ["prune.n_samples=32", "prune.seqlen=512"]  # PASER table: Wanda on 32 windows of the pool (~16k tokens)
SKILLIT = {"uniform mixture (selection=none)": ["selection=none"],
           "skillit, identity graph": ["selection.graph=identity"],
           "skillit, learned graph": []}


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


def scorers(data: list[str], args, tmp: Path) -> list[str]:
    """PreSelect's scoring models: the recipe trained on the whole pool for 5, 12 and --steps steps, exported (their
    summaries' eval loss is the benchmark order)."""
    start, dirs = time.perf_counter(), []
    for steps in (*PRESELECT_STEPS, args.steps):
        cwd = tmp / f"scorer-{steps}"
        cwd.mkdir()
        run_dir = train(f"recipe={args.recipe}", *data, "selection=none", f"trainer.max_steps={steps}",
                        "trainer.eval_at_start=false", cwd=cwd)
        cli("export", f"run_dir={run_dir}")
        dirs.append(str(run_dir))
    print(f"preselect: 3 scoring runs trained and exported in {time.perf_counter() - start:.0f} s")
    return ["selection=preselect", f"selection.models=[{','.join(repr(d) for d in dirs)}]",
            "selection.metric=eval_loss", "selection.label_share=0.1"]


def measure(name: str, overrides: list[str], data: list[str], kinds: list[str], args) -> list:
    frac = [] if "selection=none" in overrides else [f"selection.fraction={args.keep}"]
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
SKILL_COLUMNS = ["mixture", "exact match add", "exact match sub", "exact match both", "eval loss", "selection s",
                 "run wall s"]


def paser(data: list[str], kinds: list[str], args, tmp: Path) -> list[list]:
    """The recipe's model pruned once (Wanda, 50%), recovered on the whole pool, random 20% and PASER's 20%."""
    pruned = tmp / "pruned"
    cli("prune", f"recipe={args.recipe}", *data, "prune=wanda", "prune.sparsity=0.5", *CALIBRATION, f"out={pruned}")
    model = [f"model.path={pruned}", "model.init=pretrained"]
    rows = {"all (pruned)": ["selection=none"], "random (pruned)": ["selection=random"],
            "paser (pruned)": ["selection=paser", f"selection.original={args.original}"]}
    return [measure(name, [*ov, *model], data, kinds, args) for name, ov in rows.items()]


def skillit(args) -> list[list]:
    """Skill-it's mixture against a uniform one on two skills (addition, subtraction), the same steps each."""
    rows = []
    for name, overrides in SKILLIT.items():
        s, _ = read(train(f"recipe={args.skill_recipe}", *overrides, f"trainer.max_steps={args.steps}",
                          "trainer.eval_at_start=false"))
        e = s.get("eval", {})
        rows.append([name, *(f"{e.get(k, float('nan')):.1%}" for k in ("exact_match/add", "exact_match/sub",
                                                                       "exact_match")),
                     f"{e.get('eval_loss', float('nan')):.3f}", f"{s['phase_s'].get('selection', 0.0):.1f}",
                     f"{s['wall_time_s']:.0f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="noisy,paser,skillit", help="noisy (the pool table), paser, skillit")
    ap.add_argument("--methods", default=None, help=f"noisy table rows (default: all of {', '.join(METHODS)})")
    ap.add_argument("--pool", type=int, default=1000, help="rows in the pool")
    ap.add_argument("--keep", type=float, default=0.2, help="share of the pool each selector keeps")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per row (batch 16: 480 samples)")
    ap.add_argument("--recipe", default="quickstart", help="recipe every row trains (quickstart_tiny: smoke test)")
    ap.add_argument("--original", default="smollm2_135m", help="paser: the recipe's unpruned model (tiny_llama: smoke)")
    ap.add_argument("--skill-recipe", default="skillit_smollm2", help="skillit table's recipe (skillit_tiny: smoke)")
    ap.add_argument("--seed", type=int, default=0, help="pool generator seed")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = ap.parse_args()
    names = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown rows {unknown}: choose from {', '.join(METHODS)}")
    command = "bench/selection_compare.py " + " ".join(sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="tuneforge-bench-selection-"))
    pool, ev, kinds = write_pool(tmp, args.pool, args.seed)
    data = ["data=jsonl", f"data.path={pool}", f"data.eval_path={ev}", "data.answer_field=answer",
            "data.checker=number", "data.max_length=128", "data.system_prompt=Answer with the number only.",
            *args.overrides]
    pool_title = f"{args.pool} rows: {', '.join(f'{k} {v:.0%}' for k, v in SHARE.items())}; keep {args.keep:.0%}, " \
                 f"{args.steps} steps"

    def done(title: str, columns: list[str], rows: list[list]) -> None:  # each table is kept as soon as it is done
        show(title, columns, rows)
        if args.record:
            record(title, command, rows, columns)

    if "noisy" in args.parts:
        if "preselect" in names:
            METHODS["preselect"] = scorers(data, args, tmp)
        done(f"selection on a noisy pool ({pool_title})", COLUMNS,
             [measure(m, METHODS[m], data, kinds, args) for m in names])
    if "paser" in args.parts:
        done(f"PASER: recovering a 50% Wanda-pruned model on the noisy pool ({pool_title})", COLUMNS,
             paser(data, kinds, args, tmp))
    if "skillit" in args.parts:
        done(f"Skill-it: mixing addition and subtraction (recipe={args.skill_recipe}, {args.steps} steps)",
             SKILL_COLUMNS, skillit(args))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
