"""What a LISA layer switch costs: the seconds of each engine rebuild, beside the seconds of a training step.

    .venv/bin/python bench/lisa_switch.py [--steps 6] [key=value ...]      # tiny model: recipe=lisa_tiny

Runs `tuneforge train peft=lisa peft.period=1` (a switch before every step) in this process (1 rank, ZeRO-0
unless overridden) and times each
`Engine.rebuild` (release the DeepSpeed engine, build the new one, carry the optimizer state of what stays
active) and each step. Defaults to the tiny LISA recipe; pass model/data overrides for SmolLM2, e.g.
`recipe=quickstart peft=lisa trainer.micro_batch_size=4`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from tuneforge.cli import main as cli
    from tuneforge.peft.lisa.apply import Lisa
    from tuneforge.runner.engine import Engine

    rebuilds, switches = [], []
    rebuild, switch = Engine.rebuild, Lisa.switch

    def timed_rebuild(self, change):
        t0 = time.perf_counter()
        rebuild(self, change)
        rebuilds.append(time.perf_counter() - t0)

    def timed_switch(self, new, engine):
        t0 = time.perf_counter()
        switch(self, new, engine)
        switches.append(time.perf_counter() - t0)

    Engine.rebuild, Lisa.switch = timed_rebuild, timed_switch
    with tempfile.TemporaryDirectory(prefix="lisa-switch-") as tmp:
        code = cli(["train", "recipe=lisa_tiny", "peft.period=1", f"trainer.max_steps={args.steps}",
                    "trainer.eval_at_start=false", "logger.progress=false", "data.checker=none", "trainer.nproc=1", "zero=zero0",
                    f"trainer.output_dir={tmp}/run", *args.overrides])
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    print(json.dumps({"exit": code, "switches": len(switches), "rebuild_s_median": statistics.median(rebuilds or [0]),
                      "switch_s_median": statistics.median(switches or [0]),
                      "tokens_per_s_median": statistics.median(steps or [0])}, indent=1))


if __name__ == "__main__":
    main()
