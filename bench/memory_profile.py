"""Where a tuneforge run's peak memory goes: the peak RSS of each phase of one run, in one process.

    .venv/bin/python bench/memory_profile.py [--rows 32] [--max-len 512] [--steps 8] [--ops 0] [key=value ...]

Runs the phases of `Runner` one by one on the peer-compare job (SmolLM2-135M, GSM8K rows, answer-only loss,
LoRA by default; any override such as peft=full or precision=fp32 applies) and, around each, resets the kernel's
peak-RSS counter (`/proc/self/clear_refs` 5) so each phase's VmHWM is its own peak. Also: the bytes autograd
saves for backward in one micro-batch (SavedForBackward), split into the decoder's and the head+loss's, the
size of the answer-token logits, the seconds per training step, and the live RSS after training (what the
allocator kept). It restarts on jemalloc where installed, as the `tuneforge` command does; compare allocators with
TUNEFORGE_ALLOCATOR=system and glibc's settings (MALLOC_MMAP_THRESHOLD_=..., MALLOC_ARENA_MAX=2).
`--ops N` also prints where the time of N micro-batches' forward + backward goes (torch.profiler, the top
operators by self CPU time) before training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peer_compare import DATA_CANDIDATES, LR, MICRO  # noqa: E402


def status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def saved_bytes(runner) -> dict:
    """Bytes saved for backward by one micro-batch of the run's first step, and the answer-token logits' size."""
    import torch

    from tuneforge.data.batching import collate
    from tuneforge.models.footprint import SavedForBackward

    idx = runner.data.plan.micro_batches(0, 0)[0]
    batch = collate([runner.data.samples[i] for i in idx], runner.tok.pad_token_id)
    model = runner.objective.lm
    with SavedForBackward(model) as saved, runner.autocast():
        loss = runner.objective(**batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    vocab = model.get_output_embeddings().weight.shape[0]
    return {"batch_shape": list(batch["input_ids"].shape), "trained_tokens": trained,
            "saved_for_backward_mb": saved.bytes / 2**20,
            "answer_logits_fp32_mb": trained * vocab * 4 / 2**20,
            "full_logits_fp32_mb": batch["input_ids"].numel() * vocab * 4 / 2**20,
            "torch_threads": torch.get_num_threads()}


def op_table(runner, n: int) -> str:
    """The top operators by self CPU time over the forward + backward of the first `n` micro-batches."""
    from torch.profiler import ProfilerActivity, profile

    from tuneforge.data.batching import collate

    idx = [mb for s in range(runner.total_steps) for mb in runner.data.plan.micro_batches(s, 0)][:n]
    batches = [collate([runner.data.samples[i] for i in mb], runner.tok.pad_token_id) for mb in idx]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            with runner.autocast():
                loss = runner.objective(**batch)
            loss.backward()
    runner.objective.lm.zero_grad(set_to_none=True)
    shapes = ", ".join(str(list(b["input_ids"].shape)) for b in batches)
    return f"micro-batches {shapes}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--ops", type=int, default=0, help="profile this many micro-batches' operators first")
    ap.add_argument("--out", default="/tmp/tuneforge-memory-profile")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import shutil

    from tuneforge.config.run import Run
    from tuneforge.hardware import allocator, preload_jemalloc
    from tuneforge.runner.runner import Runner
    from tuneforge.runner.start import prepare_run_dir

    preload_jemalloc(sys.orig_argv[1:])  # as the `tuneforge` command does (TUNEFORGE_ALLOCATOR=system: not)

    data = next(p for p in DATA_CANDIDATES if p.is_dir())
    shutil.rmtree(args.out, ignore_errors=True)
    run = Run.compose(["data=qa", f"data.path={data}/train.jsonl", f"data.limit={args.rows}", "data.eval_split=8",
                       f"data.max_length={args.max_len}", "data.cache=false", "peft=lora", f"optim.lr={LR}",
                       f"trainer.micro_batch_size={MICRO}", f"trainer.max_steps={args.steps}", "trainer.device=cpu",
                       "trainer.eval_at_start=false", "trainer.max_new_tokens=64", f"trainer.output_dir={args.out}",
                       "logger.progress=false", *args.overrides])
    prepare_run_dir(run)
    r = Runner(run)
    report = {"allocator": allocator(), "imports_rss_mb": status("VmRSS")}
    for phase in (r.setup, r.select_data, r.build_model, r.build_engine):
        reset_peak()
        phase()
        report[f"{phase.__name__}_peak_mb"] = status("VmHWM")
        report[f"{phase.__name__}_rss_after_mb"] = status("VmRSS")
    report.update(saved_bytes(r))
    if args.ops:
        print(op_table(r, args.ops))
    reset_peak()
    r.console.start(r.total_steps, r.step)
    t0 = time.perf_counter()
    while r.step < r.total_steps:
        r.train_step()
    report["train_s_per_step"] = (time.perf_counter() - t0) / max(r.total_steps, 1)
    r.console.stop()
    report["train_steps_peak_mb"], report["rss_after_train_mb"] = status("VmHWM"), status("VmRSS")
    reset_peak()
    r.evaluate()
    report["eval_peak_mb"] = status("VmHWM")  # loss and, for checked answers, greedy generation
    r.save()
    r.teardown()
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in report.items()}, indent=1))


if __name__ == "__main__":
    main()
