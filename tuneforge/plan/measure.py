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


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages behind every tensor the Python heap holds now."""
    import torch

    seen: dict[tuple, int] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
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
