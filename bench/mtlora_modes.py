"""MTLoRA `matrix` (default) vs `routed` on SmolLM2-135M and the quickstart add+sub problems: the time of one
training step (forward + backward of the objective on the same micro-batch mixing both tasks) and the activation
bytes saved for backward. The modes' steps are timed in turn (ABAB...), so load on a shared machine hits both
alike; the table gives the fastest and the median step as tokens/s.

    .venv/bin/python bench/mtlora_modes.py [--reps 7] [--batch 16] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import show  # noqa: E402

MODES = {"matrix (task_layers=1)": ["peft.mode=matrix"], "routed": ["peft.mode=routed"]}
COMMON = ["recipe=quickstart", "peft=mtlora", "data.ops=[+,-]", "data.tasks=[add,sub]"]


def build(overrides: list[str], batch_size: int):
    """(model, batch, trainable parameters) built as a run builds them."""
    import torch

    from tuneforge import registry
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.batching import collate
    from tuneforge.data.encode import encode
    from tuneforge.models.load import load_tokenizer
    from tuneforge.peft.base import MethodContext, count
    from tuneforge.runner.model import build as build_model

    specs = build_specs(compose(overrides))
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(specs["trainer"].seed)
    samples = encode(loaded.train[:batch_size], tok, specs["data"], loaded.report)
    torch.manual_seed(specs["trainer"].seed)
    model, _ = build_model(specs, tok, MethodContext(seed=specs["trainer"].seed, tokenizer=tok, specs=specs))
    return model.train(), collate(samples, tok.pad_token_id), count(model)[0]


def step(objective, batch) -> float:
    objective.lm.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    objective(**batch).backward()
    return time.perf_counter() - t0


def main() -> None:
    from tuneforge.models.footprint import SavedForBackward
    from tuneforge.runner.objective import CausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16, help="micro-batch (the quickstart's 16)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    built = {m: build([*COMMON, *o, *args.overrides], args.batch) for m, o in MODES.items()}
    objectives = {m: CausalLM(model) for m, (model, _, _) in built.items()}
    times = {m: [] for m in MODES}
    for _ in range(args.reps + 1):  # the first round warms up
        for m in MODES:
            times[m].append(step(objectives[m], built[m][1]))
    rows = []
    for m, (model, batch, n) in built.items():
        assert set(batch["task_ids"].tolist()) == {0, 1}, "the micro-batch should mix both tasks"
        tokens = int(batch["attention_mask"].sum())
        with SavedForBackward(model) as saved:
            loss = objectives[m](**batch)
        loss.backward()
        t = times[m][1:]
        rows.append([m, f"{n / 1e6:.2f}M", f"{tokens / min(t):.0f}", f"{tokens / statistics.median(t):.0f}",
                     f"{saved.bytes / 2**20:.0f}"])
    show(f"MTLoRA modes, one training step (micro-batch {args.batch}, {args.reps} timed rounds)",
         ["mode", "trainable", "tokens/s (fastest)", "tokens/s (median)", "saved for backward MiB"], rows)


if __name__ == "__main__":
    main()
