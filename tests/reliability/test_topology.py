"""Resuming on another number of ranks or ZeRO stage through DeepSpeed's universal checkpoint."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ok, tuneforge
from tests.reliability.helpers import cut_back, launch, rows, train
from tuneforge.config.run import Run
from tuneforge.runner.start import prepare_run_dir

STEPS = ["trainer.max_steps=14", "trainer.save_every=4", "trainer.keep_last=5", "data.n_train=48"]
# Global batch 4 in each: 2 ranks x micro 2; one big batch on 1 rank (micro 4); 1 rank x micro 2 x accumulation 2.
TOPOLOGY = {"zero2x2": ["trainer.nproc=2", "trainer.grad_accum=1", "zero=zero2"],
            "zero2x1": ["trainer.nproc=1", "trainer.micro_batch_size=4", "trainer.grad_accum=1", "zero=zero2"],
            "zero3x1": ["trainer.nproc=1", "trainer.grad_accum=2", "zero=zero3"]}


def dump(tmp_path, name, topology, ckpt):
    """Every trainable parameter's value and optimizer state right after resuming from `ckpt`."""
    from tests.reliability.helpers import TINY

    run = Run.compose([*TINY, *STEPS, *TOPOLOGY[topology], f"trainer.resume={ckpt}"])
    run_dir = prepare_run_dir(run, tmp_path / name)
    launch("tests.reliability.state_dump", [str(run_dir), str(tmp_path / f"{name}.pt")], run.world_size)
    return torch.load(tmp_path / f"{name}.pt", weights_only=False)


@pytest.mark.parametrize("source,target", [("zero2x2", "zero3x1"), ("zero2x1", "zero2x2")])
def test_resume_on_another_topology(tmp_path, source, target):
    ok(train(tmp_path, "full", *STEPS, *TOPOLOGY[source]))
    run = cut_back(tmp_path / "full", tmp_path / "run", 4)
    ckpt = run / "checkpoints/step_4"
    proc = train(tmp_path, "run", *STEPS, *TOPOLOGY[target], "trainer.resume=auto")
    assert proc.returncode == 2 and f"tuneforge ckpt convert {ckpt}" in proc.stdout + proc.stderr
    ok(tuneforge("ckpt", "convert", str(ckpt), cwd=tmp_path))
    ok(tuneforge("ckpt", "verify", str(ckpt / "universal"), cwd=tmp_path))

    original, moved = dump(tmp_path, "orig", source, ckpt), dump(tmp_path, "moved", target, ckpt)
    assert original["step"] == moved["step"] == 4 and original["state"].keys() == moved["state"].keys()
    for name, want in original["state"].items():
        got = moved["state"][name]
        assert torch.equal(moved["weights"][name], original["weights"][name]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got[key], want[key]), (name, key)
        assert got["step"] == want["step"] == 4

    ok(train(tmp_path, "run", *STEPS, *TOPOLOGY[target], "trainer.resume=auto"))
    want, got = rows(tmp_path / "full"), rows(run)
    assert [r["step"] for r in got] == list(range(1, 15))
    torch.testing.assert_close(torch.tensor([r["loss"] for r in got[4:]]), torch.tensor([r["loss"] for r in want[4:]]),
                               rtol=1e-5, atol=0)
