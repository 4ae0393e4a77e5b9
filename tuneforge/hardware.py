"""What the machine is fast at, read once where a decision needs it (precision=auto, the cross-axis warnings).

bf16 matmuls are fast on CUDA devices with bf16 support and on CPUs with AMX or AVX512-BF16 (measured here:
SmolLM2-135M LoRA trains 1.75x faster than fp32, same eval loss); on CPUs without them PyTorch emulates bf16,
~100x slower than fp32. FP8 matmuls (precision=fp8) need CUDA devices of compute capability >= 8.9 (Ada,
Hopper and newer); no CPU has them. The CPU's flags are read from /proc/cpuinfo; `TUNEFORGE_CPU_FLAGS="avx2 fma ..."`
replaces them (to see what another CPU would get, or to force fp32 where bf16 is slow for another reason)."""

from __future__ import annotations

import os
from pathlib import Path

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags: TUNEFORGE_CPU_FLAGS if set, else /proc/cpuinfo's; None where unreadable."""
    if "TUNEFORGE_CPU_FLAGS" in os.environ:
        return set(os.environ["TUNEFORGE_CPU_FLAGS"].split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def fast_bf16(device: str) -> tuple[bool, str]:
    """(whether bf16 matmuls are fast on `device` -- "cpu" or "cuda" --, why)."""
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {name} supports bf16"
        return False, f"CUDA device {name} has no bf16 support"
    flags = cpu_flags()
    if flags is None:
        return False, "the CPU's flags are unknown on this platform"
    fast = [f.upper().replace("_", "-") for f in FAST_BF16_FLAGS if f in flags]
    if fast:
        return True, f"the CPU has {' and '.join(fast)}"
    return False, "the CPU has neither AMX-BF16 nor AVX512-BF16 (bf16 matmuls would be ~100x slower than fp32)"


def fp8_kernels(device: str) -> tuple[bool, str]:
    """(whether `device` -- "cpu" or "cuda" -- has FP8 matmul kernels, why)."""
    if device != "cuda":
        return False, "the run trains on a CPU, which has no FP8 matmul kernels"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    cc, name = torch.cuda.get_device_capability(), torch.cuda.get_device_name()
    has = cc >= (8, 9)
    return has, f"CUDA device {name} has compute capability {cc[0]}.{cc[1]} ({'>=' if has else '<'} 8.9)"
