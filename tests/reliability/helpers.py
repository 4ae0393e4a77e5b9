"""Shared pieces of the reliability tests: short tiny runs, copying a run back to a checkpoint, rank launches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import ROOT, tuneforge

# 24 samples, global batch 4: 6 steps per epoch, so 8-step runs cross an epoch boundary.
TINY = ["recipe=quickstart_tiny", "peft=full", "trainer.micro_batch_size=2", "trainer.eval_at_start=false",
        "data.n_train=24", "data.n_eval=2", "trainer.max_new_tokens=2", "launcher.grace_s=10"]


def train(tmp: Path, name: str, *overrides: str, env: dict | None = None):
    return tuneforge("train", *TINY, f"trainer.output_dir={tmp / name}", *overrides, cwd=tmp, env=env)


def rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]


def cut_back(src: Path, dst: Path, step: int) -> Path:
    """A copy of run `src` as it was when checkpoint step_<step> was committed (as if it had stopped there)."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    for gone in ("final", "export"):
        shutil.rmtree(dst / gone, ignore_errors=True)
    (dst / "summary.json").unlink(missing_ok=True)
    kept = [json.dumps(r) for r in rows(src) if r["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(k + "\n" for k in kept))
    return dst


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor inside a checkpoint's DeepSpeed files, by file and key path (loaded with weights_only=True)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    out = {}

    def walk(prefix, obj):
        if torch.is_tensor(obj):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    for f in sorted(path.glob("*optim_states.pt")) + sorted(path.glob("*model_states.pt")):
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            walk(f.name, torch.load(f, weights_only=True))
    return out


def launch(module: str, args: list[str], nproc: int) -> list[str]:
    """Run `python -m module args` as `nproc` ranks; return each rank's output."""
    from tuneforge.distributed.dist import free_port

    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"})
             for r in range(nproc)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs
