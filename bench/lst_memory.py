"""LST vs LoRA vs full fine-tuning on SmolLM2-135M: activation memory saved for backward, peak memory, throughput.

    .venv/bin/python bench/lst_memory.py [--steps 5] [--batch 8] [key=value ...]

Saved for backward: bytes autograd keeps for one training forward (the whole objective: decoder, LM head at the
trained positions, loss) on one micro-batch of the quickstart data, counted with torch.autograd.graph.
saved_tensors_hooks (parameters excluded, each storage once). Peak memory and tokens/s: real `tuneforge train`
runs (ZeRO-0, 1 rank, fp32, micro-batch --batch), rank 0's peak RSS and the median tokens/s over the steps after
the first. Same data, batch and sequence lengths for every method. LST rows: the defaults (the paper's form: the LM
head reads the side network's output, Fisher-pruned init, every 4th side layer dropped) and the same without layer
dropping. `--methods` runs some rows, e.g. `--methods "LST r=8"`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402

METHODS = {
    "full": ["peft=full", "optim.lr=5e-5"],
    "LoRA r=16 all-linear": ["peft=lora", "peft.r=16"],
    "LST r=8": ["peft=lst", "peft.reduction=8", "optim.lr=3e-3"],
    "LST r=8 no layer dropping": ["peft=lst", "peft.reduction=8", "peft.drop_every=0", "optim.lr=3e-3"],
}


def saved_for_backward(overrides: list[str], batch_size: int) -> tuple[int, int]:
    """(bytes saved for backward in one forward of the objective, trainable parameters)."""
    from tuneforge import registry
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.batching import collate
    from tuneforge.data.encode import encode
    from tuneforge.models.footprint import SavedForBackward
    from tuneforge.models.load import load_tokenizer
    from tuneforge.peft.base import MethodContext, count
    from tuneforge.runner.model import build
    from tuneforge.runner.objective import CausalLM

    specs = build_specs(compose(overrides))
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(specs["trainer"].seed)
    samples = encode(loaded.train[:batch_size], tok, specs["data"], loaded.report)
    pool = encode(loaded.train, tok, specs["data"], loaded.report)  # LST's Fisher init samples the training set
    model, _ = build(specs, tok, MethodContext(seed=specs["trainer"].seed, tokenizer=tok, train_samples=pool,
                                               specs=specs))
    model.train()
    with SavedForBackward(model) as saved:
        loss = CausalLM(model)(**collate(samples, tok.pad_token_id))
    loss.backward()
    return saved.bytes, count(model)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--methods", default=None, help="comma-separated row names to run (default: all)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    common = ["recipe=quickstart", f"trainer.micro_batch_size={args.batch}", "trainer.grad_accum=1",
              "trainer.eval_at_start=false", "data.n_eval=4", *args.overrides]
    rows = []
    for method, m in METHODS.items():
        if args.methods and method not in args.methods.split(","):
            continue
        saved, n_train = saved_for_backward([*common, *m], args.batch)
        s, metrics = read(train(*common, *m, f"trainer.max_steps={args.steps}"))
        tps = [r["tokens_per_s"] for r in metrics if "tokens_per_s" in r][1:]  # skip the warm-up step
        rows.append([method, f"{n_train / 1e6:.2f}M", f"{saved / 2**20:,.0f}", f"{s['peak_memory_mb']:,.0f}",
                     f"{statistics.median(tps):.0f}"])
    show(f"LST memory and throughput (SmolLM2-135M, quickstart data, micro-batch {args.batch}, {args.steps} steps)",
         ["method", "trainable", "saved for backward MiB", "peak RSS MB (rank 0)", "tokens/s"], rows)


if __name__ == "__main__":
    main()
