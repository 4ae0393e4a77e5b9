"""tuneforge against Hugging Face TRL's SFTTrainer (+ PEFT LoRA) on the same job, side by side, in one invocation.

    .venv/bin/python bench/peer_compare.py [--rows 200] [--max-len 512] [--parts lora,full,lisa] [--record]

The job (issue 15): SmolLM2-135M-Instruct; the first `--rows` rows of GSM8K train as question -> answer chat
turns, loss on the answer only (TRL: the conversational prompt/completion format, completion-only loss);
LoRA r=16 alpha=32 on all linear layers (or full fine-tuning, or LISA gamma 2); micro-batch 4, max length
`--max-len`, lr 1e-4 cosine (5% warm-up for both), one epoch, CPU; TRL pads to the longest sample of a batch.
Each row runs in its own process (`--child`, so its peak RSS is its own: VmHWM read when training ends) one
after another, so no two compete for the cores. A tuneforge row's process restarts on jemalloc where it is
installed, as the `tuneforge` command does (TUNEFORGE_ALLOCATOR=system: not); TRL's runs on the C library's malloc.

Columns: train seconds (the training loop only, after loading and tokenizing); real tokens/s (the non-pad
tokens of the training inputs over train seconds, counted from each tool's own inputs: the table shows both
counts, which agree); peak RSS; the mean training loss of the last 10 steps; eval loss on the first 100
GSM8K test rows, computed by one function for both tools (answer-only mean token loss in fp32, batches of 4,
on the trained model). Ratios are against the TRL row of the same kind (LoRA -> TRL LoRA fp32; full and
LISA -> TRL full fp32), with PASS/FAIL where issue 15 sets a target:
  tuneforge LoRA defaults   >= 3x tokens/s, <= 0.5x peak RSS, eval loss <= TRL's + 2%
  tuneforge LoRA fp32       >= 2x tokens/s
  tuneforge full defaults   >= 1.5x tokens/s, <= 0.7x peak RSS

GSM8K is read from ../shared/data/gsm8k (or --data); SmolLM2 from tuneforge's model cache (scripts/warmup.py).
`--record` appends the table, the command, the machine and its CPU flags to bench/RESULTS.md. A smoke run:
`--rows 16 --max-len 256 --eval-rows 8 --parts lora`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, show  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_CANDIDATES = [ROOT.parent / "shared" / "data" / "gsm8k", ROOT.parent.parent / "shared" / "data" / "gsm8k",
                   Path("/work/shared/data/gsm8k")]
LR, MICRO, WARMUP, SEED = 1e-4, 4, 0.05, 42  # WARMUP: a share of the steps, rounded the same way for both tools
LORA = {"r": 16, "alpha": 32}

# (row label, tool, kind, precision, reference label); kind: lora | full | lisa; precision: a key of PRECISION
ROWS = {
    "lora": [("TRL SFTTrainer + PEFT LoRA, fp32", "trl", "lora", "fp32", None),
             ("tuneforge LoRA, defaults (precision=auto)", "tuneforge", "lora", "auto", "trl-lora"),
             ("tuneforge LoRA, fp32", "tuneforge", "lora", "fp32", "trl-lora"),
             ("tuneforge LoRA, bf16 weights (precision=bf16 precision.params=bf16)", "tuneforge", "lora", "bf16w",
              "trl-lora")],
    "full": [("TRL SFTTrainer full fine-tuning, fp32", "trl", "full", "fp32", None),
             ("tuneforge full, defaults (precision=auto)", "tuneforge", "full", "auto", "trl-full"),
             ("tuneforge full, fp32", "tuneforge", "full", "fp32", "trl-full")],
    "lisa": [("tuneforge LISA gamma 2, defaults (precision=auto)", "tuneforge", "lisa", "auto", "trl-full")],
}
PRECISION = {"auto": ["precision=auto"], "fp32": ["precision=fp32"],
             "bf16w": ["precision=bf16", "precision.params=bf16"]}  # bf16 weights: DeepSpeed's bf16 engine
# (row label) -> (min tokens/s ratio, max peak ratio, max eval-loss ratio), issue 15's targets
TARGETS = {"tuneforge LoRA, defaults (precision=auto)": (3.0, 0.5, 1.02),
           "tuneforge LoRA, fp32": (2.0, None, None),
           "tuneforge full, defaults (precision=auto)": (1.5, 0.7, None)}
COLUMNS = ["run", "train s", "tokens", "real tokens/s", "peak RSS MB", "loss (last 10 steps)", "eval loss",
           "tokens/s ratio", "peak ratio", "eval ratio", "target"]


# ------------------------------------------------------------------ shared by both tools (children)
def gsm8k(data: Path, split: str, n: int) -> list[dict]:
    with open(data / f"{split}.jsonl") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def smollm2_dir() -> str:
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import materialize

    return materialize(build_specs(compose([]))["model"].path)


def answer_only(tok, rows: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels masked to the answer) per row: the chat template of question -> answer, the prompt
    being the rendering up to the assistant turn (what TRL's prompt/completion format trains on)."""
    out = []
    for r in rows:
        user = [{"role": "user", "content": r["question"]}]
        prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": r["answer"]}], tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][:max_len]
        out.append((ids, [-100] * len(p) + ids[len(p):]))
    return out


def eval_loss(model, tok, rows: list[dict], max_len: int) -> float:
    """Answer-only mean token loss over `rows` in fp32, batches of 4 right-padded: the same for both tools."""
    import torch
    import torch.nn.functional as F

    samples, total, count = answer_only(tok, rows, max_len), 0.0, 0
    model.float().eval()  # weights trained in bf16 are evaluated in fp32 too (peak RSS was read before)
    with torch.no_grad():
        for i in range(0, len(samples), 4):
            batch = samples[i:i + 4]
            n = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s, _ in batch])
            labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s, _ in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum",
                                     ignore_index=-100).item()
            count += int((target != -100).sum())
    return total / max(count, 1)


def warmup(job: dict) -> int:
    """Warm-up steps: 5% of the epoch's steps, rounded (one number for both tools, whose own rounding differs)."""
    return int(round(WARMUP * (job["rows"] // MICRO)))


def vm_hwm_mb() -> float:
    """This process's peak resident set so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def last10(losses: list[float]) -> float:
    tail = losses[-10:]
    return sum(tail) / max(len(tail), 1)


# ------------------------------------------------------------------ the children
def run_tuneforge(job: dict) -> dict:
    from tuneforge.config.run import Run
    from tuneforge.runner.runner import Runner
    from tuneforge.runner.start import preflight, prepare_run_dir

    out = Path(job["out"])
    peft = {"lora": ["peft=lora", f"peft.r={LORA['r']}", f"peft.alpha={LORA['alpha']}"],
            "full": ["peft=full"], "lisa": ["peft=lisa", "peft.gamma=2"]}[job["kind"]]
    overrides = ["data=qa", f"data.path={job['data']}/train.jsonl", f"data.limit={job['rows']}", "data.eval_split=0",
                 f"data.max_length={job['max_len']}", "data.cache=false", *peft, *PRECISION[job["precision"]],
                 f"optim.lr={LR}", "sched=cosine", "sched.warmup_ratio=0", f"sched.warmup_steps={warmup(job)}", f"trainer.micro_batch_size={MICRO}",
                 "trainer.epochs=1", "trainer.max_steps=-1", "trainer.log_every=1", "trainer.eval_at_start=false", "trainer.device=cpu",
                 f"trainer.seed={SEED}", f"trainer.output_dir={out / 'run'}", "logger.progress=false", *job["extra"]]
    run = Run.compose(overrides)
    preflight(run)
    prepare_run_dir(run)
    runner = Runner(run)
    if runner.run() != 0:
        raise SystemExit((out / "run" / "train.log").read_text()[-3000:])
    peak = vm_hwm_mb()
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "step" in r]
    tokens = sum(len(s.input_ids) for s in (runner.data.pool[i] for i in runner.data.chosen))
    model = runner.objective.lm
    return {"train_s": runner.phase_s["train"], "tokens": tokens, "peak_mb": peak, "last10": last10(losses),
            "steps": len(losses), "model": model}


def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = gsm8k(Path(job["data"]), "train", job["rows"])
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                             "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows])
    args = SFTConfig(output_dir=str(Path(job["out"]) / "trl"), per_device_train_batch_size=MICRO, num_train_epochs=1,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=warmup(job), weight_decay=0.0,
                     max_grad_norm=1.0, max_length=job["max_len"], completion_only_loss=True, packing=False,
                     padding_free=False, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
                     logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=SEED,
                     disable_tqdm=True)
    peft_config = (LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM") if job["kind"] == "lora" else None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    peak = vm_hwm_mb()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_s": train_s, "tokens": tokens, "peak_mb": peak, "last10": last10(losses), "steps": len(losses),
            "model": trainer.model}


def child(job: dict) -> None:
    from transformers import AutoTokenizer

    if job["tool"] == "tuneforge":  # what `tuneforge train` does first: restart on jemalloc where installed
        from tuneforge.hardware import preload_jemalloc

        preload_jemalloc(sys.orig_argv[1:])

    result = (run_trl if job["tool"] == "trl" else run_tuneforge)(job)
    model = result.pop("model")
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    result["eval_loss"] = eval_loss(model, tok, gsm8k(Path(job["data"]), "test", job["eval_rows"]), job["max_len"])
    Path(job["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------ the parent
def measure(label: str, tool: str, kind: str, precision: str, args, scratch: Path) -> dict:
    job = {"tool": tool, "kind": kind, "precision": precision, "rows": args.rows, "max_len": args.max_len,
           "eval_rows": args.eval_rows, "data": str(args.data), "extra": args.overrides if tool == "tuneforge" else [],
           "out": str(scratch / f"{tool}-{kind}-{precision}"), "result": str(scratch / f"{tool}-{kind}-{precision}.json")}
    print(f"... {label}", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return {}
    return json.loads(Path(job["result"]).read_text())


def ratio_cells(label: str, r: dict, ref: dict | None) -> list[str]:
    if not ref or not r:
        return ["-", "-", "-", "-"]
    tps = (r["tokens"] / r["train_s"]) / (ref["tokens"] / ref["train_s"])
    peak, ev = r["peak_mb"] / ref["peak_mb"], r["eval_loss"] / ref["eval_loss"]
    want = TARGETS.get(label)
    if want is None:
        verdict = "-"
    else:
        fails = [name for name, ok in (("tokens/s", tps >= want[0]), ("peak", want[1] is None or peak <= want[1]),
                                       ("eval", want[2] is None or ev <= want[2])) if not ok]
        verdict = "PASS" if not fails else "FAIL (" + ", ".join(fails) + ")"
    return [f"{tps:.2f}x", f"{peak:.2f}x", f"{ev:.3f}x", verdict]


def cpu_flags_line() -> str:
    from tuneforge.hardware import cpu_flags

    flags = cpu_flags() or set()
    shown = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8") if f in flags]
    return "CPU flags: " + (", ".join(shown) or "none of avx512f/avx512_bf16/amx")


def table(args) -> list[list]:
    parts = [p for p in args.parts.split(",") if p]
    wanted = [row for p in ("lora", "full", "lisa") if p in parts for row in ROWS[p]]
    if "lisa" in parts and "full" not in parts:  # LISA is compared with TRL full fine-tuning
        wanted.insert(0, ROWS["full"][0])
    results, out = {}, []
    with tempfile.TemporaryDirectory(prefix="peer-compare-") as tmp:
        for label, tool, kind, precision, ref in wanted:
            r = measure(label, tool, kind, precision, args, Path(tmp))
            if tool == "trl":
                results[f"trl-{kind}"] = r
            if not r:
                out.append([label, "failed", *["-"] * (len(COLUMNS) - 2)])
                continue
            out.append([label, f"{r['train_s']:.0f}", str(r["tokens"]), f"{r['tokens'] / r['train_s']:.0f}",
                        f"{r['peak_mb']:,.0f}", f"{r['last10']:.4f}", f"{r['eval_loss']:.4f}",
                        *ratio_cells(label, r, results.get(ref) if ref else None)])
    return out


def record(title: str, rows: list[list]) -> None:
    lines = [f"\n## {title} — {datetime.date.today()}\n", f"`python bench/peer_compare.py {' '.join(sys.argv[1:])}`\n",
             f"Machine: {machine()}. {cpu_flags_line()}\n",
             "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |",
             *("| " + " | ".join(str(x) for x in r) + " |" for r in rows)]
    with open(Path(__file__).parent / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200, help="GSM8K train rows (the first N)")
    ap.add_argument("--eval-rows", type=int, default=100, help="GSM8K test rows for the eval loss (the first N)")
    ap.add_argument("--max-len", type=int, default=512, help="max tokens per sample")
    ap.add_argument("--parts", default="lora,full,lisa", help="comma-separated: lora, full, lisa")
    ap.add_argument("--data", type=Path, default=next((p for p in DATA_CANDIDATES if p.is_dir()), None),
                    help="directory holding GSM8K train.jsonl and test.jsonl")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for tuneforge's runs")
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.data is None:
        sys.exit("GSM8K not found: pass --data DIR (a directory with train.jsonl and test.jsonl)")
    print(cpu_flags_line(), flush=True)
    rows = table(args)
    title = (f"tuneforge vs TRL SFTTrainer (SmolLM2-135M, GSM8K {args.rows} rows, max length {args.max_len}, "
             f"micro-batch {MICRO}, 1 epoch, CPU)")
    show(title, COLUMNS, rows)
    print(cpu_flags_line())
    if args.record:
        record(title, rows)
    return None


if __name__ == "__main__":
    main()
