"""What the machine is fast at, read once where a decision needs it (precision=auto, the cross-axis warnings), and
the memory allocator the CLI runs on.

bf16 matmuls are fast on CUDA devices with bf16 support and on CPUs with AMX or AVX512-BF16 (measured here:
SmolLM2-135M LoRA trains 1.75x faster than fp32, same eval loss); on CPUs without them PyTorch emulates bf16,
~100x slower than fp32. FP8 matmuls (precision=fp8) need CUDA devices of compute capability >= 8.9 (Ada,
Hopper and newer); no CPU has them. The CPU's flags are read from /proc/cpuinfo; `TUNEFORGE_CPU_FLAGS="avx2 fma ..."`
replaces them (to see what another CPU would get, or to force fp32 where bf16 is slow for another reason)."""

from __future__ import annotations

import os
import sys
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


# ------------------------------------------------------------------ the allocator
ALLOCATORS = ("auto", "jemalloc", "system")


def allocator() -> str:
    """The malloc this process runs on: "jemalloc" when the library is loaded (preloaded), else "system"."""
    try:
        return "jemalloc" if "libjemalloc" in Path("/proc/self/maps").read_text() else "system"
    except OSError:
        return "system"


def jemalloc_library() -> str | None:
    """An installed jemalloc shared library, as LD_PRELOAD takes it: a path in the environment's own lib/ (conda),
    else the linker cache's name (e.g. Debian's libjemalloc2: libjemalloc.so.2); None when there is none."""
    import ctypes.util
    import glob

    local = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libjemalloc.so*")))
    return local[0] if local else ctypes.util.find_library("jemalloc")


def preload_jemalloc(argv: list[str]) -> str | None:
    """Restart this command with jemalloc preloaded (os.execve; returns only when it does not restart), or the
    problem with TUNEFORGE_ALLOCATOR.

    glibc's malloc keeps the pages of freed activations resident: on a SmolLM2-135M LoRA job (docs/performance.md)
    a training step peaked at 4.6 GB of resident memory and 4.1 GB stayed resident after training, with 1.2 GB
    saved for backward. jemalloc ran the same steps at the same speed with a 3.9 GB peak, 2.0 GB after. glibc's
    own knob (a fixed MALLOC_MMAP_THRESHOLD_) kept less (3.6 GB) but made each step 1.6-2.2x slower (page faults).
    TUNEFORGE_ALLOCATOR: auto (default: jemalloc where it is installed, e.g. `apt install libjemalloc2`), jemalloc
    (required), system (never). Ranks started by the launchers inherit LD_PRELOAD."""
    want = os.environ.get("TUNEFORGE_ALLOCATOR", "auto")
    if want not in ALLOCATORS:
        return f"TUNEFORGE_ALLOCATOR={want!r}: use one of {', '.join(ALLOCATORS)}"
    if want == "system" or allocator() == "jemalloc" or not sys.platform.startswith("linux"):
        return None
    path = jemalloc_library()
    if path is None:
        return ("TUNEFORGE_ALLOCATOR=jemalloc but no jemalloc library is installed: `apt install libjemalloc2` "
                "(or `conda install jemalloc`), or set TUNEFORGE_ALLOCATOR=auto" if want == "jemalloc" else None)
    if os.environ.get("TUNEFORGE_PRELOADED") == path:  # preloading it failed once: do not loop
        return None
    env = dict(os.environ, TUNEFORGE_PRELOADED=path,
               LD_PRELOAD=":".join(x for x in (path, os.environ.get("LD_PRELOAD")) if x))
    os.execve(sys.executable, [sys.executable, *argv], env)
    return None
