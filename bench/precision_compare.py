"""Precision and optimizer-state compression on SmolLM2-135M full fine-tuning: same data, steps and batch per row.

    .venv/bin/python bench/precision_compare.py [--steps 100] [--batch 8] [--rows fp32,bf16,coat] [key=value ...]
    .venv/bin/python bench/precision_compare.py --bytes-only      # the memory columns only (seconds per row)

Columns:
- optimizer-state bytes: summary.json's optimizer_state_bytes (rank 0; ZeRO-0 so the fp32 weights are the
  parameters themselves and only the optimizer's own state counts);
- saved-activation bytes per micro-batch: what autograd keeps for backward in one training forward of the
  objective (tuneforge.models.footprint.SavedForBackward, under the row's autocast), measured at micro-batch B
  and at the same B samples twice, the difference being the bytes of B samples: what does not grow with the
  batch (weights, autocast's bf16 weight copies) cancels;
- peak memory (rank 0's peak RSS on CPU, peak allocated on CUDA), tokens/s (median over the steps after the
  first), train loss at the last step and eval loss: real `tuneforge train` runs.

Rows are `ROWS` (name -> overrides, and the registered option a row needs): a row whose option is not
registered is printed as skipped with the reason. Add a row by adding a line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import read, show, train  # noqa: E402

ROWS: dict[str, tuple[list[str], tuple[str, str] | None]] = {
    "fp32 AdamW": (["precision=fp32"], None),
    "bf16 AdamW": (["precision=bf16"], None),
    "bnb 8-bit AdamW (bf16)": (["precision=bf16", "optim=adamw8bit"], ("optim", "adamw8bit")),
    "torchao 8-bit AdamW (bf16)": (["precision=bf16", "optim=ao_adamw8bit"], ("optim", "ao_adamw8bit")),
    "torchao 4-bit AdamW (bf16)": (["precision=bf16", "optim=ao_adamw4bit"], ("optim", "ao_adamw4bit")),
    "FP8 linears (emulated on CPU)": (["precision=fp8", "precision.emulate=true"], ("precision", "fp8")),
    "COAT (bf16)": (["precision=coat", "precision.compute=bf16"], ("precision", "coat")),
}
COMMON = ["recipe=quickstart", "model=smollm2_135m", "peft=full", "zero=zero0", "optim.lr=5e-5", "sched=constant",
          "trainer.grad_accum=1", "trainer.eval_at_start=false", "data.n_eval=16", "trainer.max_new_tokens=8",
          "trainer.save_every=0"]


def missing(need: tuple[str, str] | None) -> str | None:
    from tuneforge import registry

    if need and need[1] not in registry.names(need[0]):
        return f"{need[0]}={need[1]} is not registered in this checkout"
    return None


def saved_activation_bytes(overrides: list[str], batch: int) -> int:
    """Bytes autograd saves for `batch` samples in one training forward (difference of 2x and 1x the samples)."""
    import torch

    from tuneforge import registry
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.batching import collate
    from tuneforge.data.encode import encode
    from tuneforge.models.footprint import SavedForBackward
    from tuneforge.models.load import load_tokenizer
    from tuneforge.peft.base import MethodContext
    from tuneforge.precision.modes import resolve
    from tuneforge.runner.model import build
    from tuneforge.runner.objective import CausalLM

    specs = build_specs(compose(overrides))
    resolve(specs["precision"], "cpu")
    tok = load_tokenizer(specs["model"])
    loaded = registry.build("data", specs["data"]).load(specs["trainer"].seed)
    samples = encode(loaded.train[:batch], tok, specs["data"], loaded.report)
    model, _ = build(specs, tok, MethodContext(seed=specs["trainer"].seed, tokenizer=tok, specs=specs))
    model.train()
    objective, precision = CausalLM(model), registry.build("precision", specs["precision"])
    out = []
    for times in (1, 2):
        with SavedForBackward(model) as saved, precision.autocast("cpu"):
            loss = objective(**collate(samples * times, tok.pad_token_id))
        out.append(saved.bytes)
        del loss
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out[1] - out[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--bytes-only", action="store_true", help="optimizer-state and activation bytes only (1 step)")
    ap.add_argument("--workdir", default="", help="where the runs go (default: a new /tmp/precision-compare-*)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="precision-compare-"))
    common = [*COMMON, f"trainer.micro_batch_size={args.batch}", *args.overrides]
    steps = 1 if args.bytes_only else args.steps
    chosen = [r for r in ROWS if not args.rows or r in args.rows.split(",")]
    results: dict[str, dict | str] = {}
    for name in chosen:
        overrides, need = ROWS[name]
        results[name] = missing(need) or {"act": saved_activation_bytes([*common, *overrides], args.batch)}
        if isinstance(results[name], str):
            continue
        cwd = workdir / name.split()[0]
        cwd.mkdir(parents=True, exist_ok=True)
        s, rows = read(train(*common, *overrides, f"trainer.max_steps={steps}", cwd=cwd))
        results[name].update(state=s["optimizer_state_bytes"], peak=s["peak_memory_mb"],
                             tps=statistics.median([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:] or [0]),
                             loss=[r["loss"] for r in rows if "loss" in r][-1], eval=s["eval"].get("eval_loss"))
        print(name, results[name], flush=True)
    ref_state = results.get("fp32 AdamW", {}).get("state") if isinstance(results.get("fp32 AdamW"), dict) else None
    ref_act = results.get("bf16 AdamW", {}).get("act") if isinstance(results.get("bf16 AdamW"), dict) else None

    def cell(v, ref):
        return f"{v / 2**20:,.1f}" + (f" ({v / ref:.2f}x)" if ref else "")

    table = []
    for name, r in results.items():
        if isinstance(r, str):
            table.append([name, f"skipped: {r}", "", "", "", "", ""])
            continue
        table.append([name, cell(r["state"], ref_state), cell(r["act"], ref_act), f"{r['peak']:,.0f}",
                      f"{r['tps']:.0f}", "" if args.bytes_only else f"{r['loss']:.4f}",
                      "" if args.bytes_only or r["eval"] is None else f"{r['eval']:.4f}"])
    show(f"precision / optimizer-state compression, SmolLM2-135M full fine-tuning ({steps} steps, micro-batch "
         f"{args.batch}, quickstart data; state vs fp32 AdamW, activations vs bf16 AdamW)",
         ["row", "optimizer state MiB", "saved activations MiB / micro-batch", "peak RSS MB (rank 0)", "tokens/s",
          f"train loss @ {steps}", "eval loss"], table)


if __name__ == "__main__":
    main()
