"""Measured, not predicted: the peak of a training step's memory, to check the plan against (`plan.measure=true`).

On CUDA it is `torch.cuda.max_memory_allocated()`. The CPU has no such counter, so the CPU definition is the
same quantity counted by hand: **the peak of live tensor bytes** on this rank during the step. At the step's
start the bytes of every live tensor's storage are counted once each (parameters, gradients, optimizer states,
DeepSpeed's flat buffers: every tensor the Python heap reaches, by storage), then torch's profiler reports every
allocation and free of the CPU allocator during the step (`profile_memory=True`), and the peak of that running
sum is added. This is what a GPU would hold (model states + activations + temporaries), without the process's
own RSS (the Python interpreter, libraries, the allocator's cached pages, memory-mapped files).
"""

from __future__ import annotations

import gc
import json
import random
import warnings
from pathlib import Path

WORDS = ("the a model learns tokens from long text rows so every position of every sample is trained and the plan "
         "can be checked against what one step holds").split()


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages behind every tensor the Python heap holds now. gc.get_objects() does not list
    objects frozen out of the collector (runner/engine.py freezes what exists when an engine is built), so they are
    unfrozen first: a measured run gives up that shortcut, and an engine release then scans everything."""
    import torch

    gc.unfreeze()
    seen: dict[tuple, int] = {}
    with warnings.catch_warnings():  # isinstance() on some deprecated module-level objects warns
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objects:
        try:
            if obj.is_meta:
                continue
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - tensor subclasses without a plain storage (e.g. fake or sparse)
            continue
        if storage.data_ptr():
            seen[(obj.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


class StepPeak:
    """`with StepPeak(device) as peak: one step`; then `peak.bytes` (the step's peak of live tensor bytes)."""

    def __init__(self, device: str):
        self.device, self.bytes = device, 0

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return self
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        self.base = live_tensor_bytes()
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.bytes = torch.cuda.max_memory_allocated()
            return
        self.prof.__exit__(*exc)
        events = [e for e in self.prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        running = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            if str(e.device_type()).endswith("CPU"):
                running += e.nbytes()
                peak = max(peak, running)
        self.bytes = self.base + peak


def write_full_rows(path: Path, rows: int = 64, words: int = 400) -> Path:
    """The check's data: text rows of `words` random words, longer than any data.max_length the check uses, so
    truncation makes every sample exactly max_length tokens, every position trained (the plan's worst case)."""
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words))}) + "\n"
                            for _ in range(rows)))
    return path


def protocol_overrides(data: Path, seq: int = 64, micro_batch: int = 2) -> list[str]:
    """How the plan is checked against a run (tests, bench/plan_validate.py): two measured steps on the rows of
    `write_full_rows`, fp32, no packing; DeepSpeed buckets of 1M elements so that model states and activations,
    not a 2 GB reduce bucket, decide the peak of a small model."""
    return ["data=text", f"data.path={data}", "data.packing=false", "data.overlength=truncate",
            f"data.max_length={seq}", "data.eval_split=2", "trainer.max_steps=2", "trainer.eval_at_start=false",
            f"trainer.micro_batch_size={micro_batch}", "zero.reduce_bucket_size=1000000",
            "zero.stage3_prefetch_bucket_size=1000000", "precision=fp32", "plan.gpu_mem=1TB", "plan.measure=true"]
