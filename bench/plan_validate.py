"""`tuneforge plan` against measurement and against published figures.

1. Measured: each configuration of the grid (model x tuning method x ZeRO stage x ranks) trains 2 steps with
   `plan.measure=true` on data where every position of every sample is trained (long text rows truncated to
   data.max_length, no packing: the plan's worst case is then the actual case); the table puts the planned
   per-rank peak beside rank 0's measured one (CPU: the peak of live tensor bytes, plan/measure.py; CUDA:
   max_memory_allocated) and the error.
2. DeepSpeed's own model-state estimates (`estimate_zero2/3_model_states_mem_needs_all_cold`) beside the plan's
   model states (weights + gradients + optimizer) for the 7B and 70B recipes.
3. The LISA paper's (arXiv 2403.17919) single-GPU Llama-2-7B figures beside the plan.

    .venv/bin/python bench/plan_validate.py                       # everything (the grid takes ~15 min on 2 cores)
    .venv/bin/python bench/plan_validate.py --parts published     # 2 and 3 only (seconds)
    .venv/bin/python bench/plan_validate.py --models tiny --ranks 1 --stages 0,2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"tiny": ["recipe=quickstart_tiny"], "smollm2": ["recipe=quickstart_tiny", "model=smollm2_135m"]}
METHODS = {"full": ["peft=full"], "lora": ["peft=lora"], "lisa": ["peft=lisa", "peft.gamma=1"]}
def predicted(overrides: list[str]) -> int:
    from tuneforge.config.run import Run
    from tuneforge.plan.planner import plan_run

    return int(plan_run(Run.compose(overrides)).peak)


def measured(overrides: list[str], out: Path) -> int | None:
    cmd = [sys.executable, "-m", "tuneforge", "train", *overrides, "plan.measure=true", f"trainer.output_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads((out / "summary.json").read_text())["measured_peak_bytes"]


def grid(args, tmp: Path) -> None:
    from tuneforge.plan.measure import protocol_overrides, write_full_rows

    data = write_full_rows(tmp / "long.jsonl")
    print("| model | method | ZeRO | ranks | planned MiB | measured MiB | error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for stage in map(int, args.stages.split(",")):
                for ranks in map(int, args.ranks.split(",")):
                    over = [*MODELS[model], *METHODS[method], *protocol_overrides(data), f"zero.stage={stage}",
                            f"trainer.nproc={ranks}"]
                    plan = predicted(over)
                    got = measured(over, tmp / f"{model}-{method}-{stage}-{ranks}")
                    err = f"{100 * (plan - got) / got:+.1f}%" if got else "failed"
                    print(f"| {model} | {method} | {stage} | {ranks} | {plan / 2**20:,.1f} | "
                          f"{(got or 0) / 2**20:,.1f} | {err} |", flush=True)


def deepspeed_rows() -> None:
    """The plan's model states (weights + gradients + optimizer, no activations) beside DeepSpeed's estimator
    (`estimate_zero2/3_model_states_mem_needs`, what the `_all_cold` helpers print), full fine-tuning of the 7B and
    70B presets with bf16 weights on one node of 8 GPUs."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from tuneforge.config.run import Run
    from tuneforge.plan.planner import plan_run

    print("\n| model | ZeRO | ranks | plan: weights + gradients + optimizer GiB/rank | DeepSpeed estimate GiB/rank "
          "| plan peak GiB/rank (+ activations, logits, buffers) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in ("llama2_7b", "llama2_70b"):
        for stage in (2, 3):
            over = ["recipe=full_llama7b_zero3", f"model={model}", f"zero.stage={stage}", "plan.gpus=8",
                    "plan.gpu_mem=80GB", "precision.params=bf16", "precision.compute=bf16"]
            plan = plan_run(Run.compose(over))
            t = plan.terms
            states = t["weights"] + t["gradients"] + t["optimizer"]
            n = t["total_params"]
            if stage == 2:
                gpu = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=8, cpu_offload=False)[1]
            else:
                largest = max(plan.shape_sizes)
                gpu = estimate_zero3_model_states_mem_needs(n, largest, num_gpus_per_node=8, cpu_offload=False,
                                                            cpu_offload_params=False)[1]
            print(f"| {model} | {stage} | 8 | {states / 2**30:,.1f} | {gpu / 2**30:,.1f} | {plan.peak / 2**30:,.1f} |")


# The LISA paper (arXiv 2403.17919, Table 1 / Fig. memory): peak GPU memory of Llama-2-7B fine-tuning on one GPU
# at batch size 1, trained in bf16 by LMFlow (weights, gradients and AdamW moments all bf16: no fp32 master).
PAPER = {"full": 59e9, "lora r=128": 23e9, "lisa E+H+2L": 23e9}


def paper_rows() -> None:
    from tuneforge.config.run import Run
    from tuneforge.plan.planner import plan_run

    print("\n| Llama-2-7B, 1 GPU, micro-batch 1 x 1024 | paper GB | plan GB (tuneforge: fp32 master + fp32 moments)"
          " | plan GB, paper's pure-bf16 states |")
    print("| --- | --- | --- | --- |")
    runs = {"full": ["peft=full"], "lora r=128": ["peft=lora", "peft.r=128"], "lisa E+H+2L": ["peft=lisa", "peft.gamma=2"]}
    for name, over in runs.items():
        plan = plan_run(Run.compose(["recipe=lisa_llama7b", *over, "trainer.micro_batch_size=1", "data.max_length=1024",
                                     "model.gradient_checkpointing=false", "precision.compute=bf16",
                                     "plan.gpu_mem=80GB"]))
        t, n = plan.terms, plan.terms["trainable"]
        # the paper's optimizer (torch AdamW on bf16 weights) keeps two bf16 moments and neither an fp32 master
        # copy nor fp32 gradient accumulators: 4 B per trainable element in place of 12 (+4 at the step)
        bf16_states = max(t["backward_start"] - t["optimizer"] + 4 * n, t["optimizer_step"] - t["optimizer"])
        print(f"| {name} | {PAPER[name] / 1e9:.0f} | {plan.peak / 1e9:.1f} | {bf16_states / 1e9:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="grid,published")
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--methods", default="full,lora,lisa")
    p.add_argument("--stages", default="0,2,3")
    p.add_argument("--ranks", default="1,2")
    args = p.parse_args()
    if "published" in args.parts:
        deepspeed_rows()
        paper_rows()
    if "grid" in args.parts:
        with tempfile.TemporaryDirectory(prefix="plan-validate-") as tmp:
            grid(args, Path(tmp))


if __name__ == "__main__":
    main()
