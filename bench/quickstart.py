"""The default recipe end to end (what `tuneforge train` with no arguments does).

    .venv/bin/python bench/quickstart.py [--runs N] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        s, metrics = read(train(*args.overrides))
        tps = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
        rows.append([i, s["recipe"], s["steps"], f"{s['eval_before']['exact_match']:.1%}", f"{s['eval']['exact_match']:.1%}",
                     f"{s['eval_before']['eval_loss']:.3f} -> {s['eval']['eval_loss']:.3f}", f"{statistics.median(tps):.0f}",
                     f"{s['phase_s']['train']:.0f}", f"{s['wall_time_s']:.0f}", f"{s['peak_memory_mb']:.0f}"])
    show("quickstart", ["run", "recipe", "steps", "exact match before", "after", "eval loss", "tokens/s (median)",
                        "train phase s", "run wall s", "peak RSS MB"], rows)


if __name__ == "__main__":
    main()
