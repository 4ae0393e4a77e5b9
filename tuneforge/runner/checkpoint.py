"""Checkpoints for resuming: <run_dir>/checkpoints/step_<N>/.

Each holds DeepSpeed's own files (trainable weights, optimizer partitions, LR scheduler, client state), one RNG
file per rank, the weights a method trained earlier but froze now (LISA's inactive layers) in
trained_frozen.safetensors, and tuneforge.json (step, data position, method state), written last by rank 0
after every rank finished: a checkpoint without it is incomplete and never resumed from. Parameters never
trained are not saved (they come from the base model), so adapter checkpoints stay small.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tuneforge.distributed import dist
from tuneforge.errors import InputError
from tuneforge.runner.weights import load_named, save_named

MARKER = "tuneforge.json"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])




FROZEN = "trained_frozen.safetensors"


def save(engine, run_dir: Path, step: int, client_state: dict, meta: dict, keep_last: int, lm, frozen: set[str]) -> Path:
    root = run_dir / "checkpoints"
    tag = f"step_{step}"
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, exclude_frozen_parameters=True)
    torch.save(rng_state(), root / tag / f"rng_rank{dist.rank()}.pt")
    if frozen:
        save_named(lm, root / tag / FROZEN, frozen)
    dist.barrier()
    if dist.is_main():
        (root / tag / MARKER).write_text(json.dumps({"step": step, "world_size": dist.world(), **meta}))
        for old in complete(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return root / tag


def complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    found = [p for p in root.glob("step_*") if (p / MARKER).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint `trainer.resume` points at (None: start fresh)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if (path / MARKER).is_file():
        return path
    found = complete(path)  # a run directory: its latest checkpoint
    if found:
        return found[-1]
    raise InputError([f"trainer.resume={resume}: not a complete tuneforge checkpoint or run directory"])


def read_meta(path: Path) -> dict:
    return json.loads((path / MARKER).read_text())


def load(engine, path: Path, lm) -> dict:
    meta = read_meta(path)
    if meta["world_size"] != dist.world():
        raise InputError([f"checkpoint {path} was written by {meta['world_size']} ranks, this run has {dist.world()}: "
                          "resume with the same trainer.nproc"])
    _, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    if (path / FROZEN).is_file():
        load_named(lm, path / FROZEN)
    rng_file = path / f"rng_rank{dist.rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return client
