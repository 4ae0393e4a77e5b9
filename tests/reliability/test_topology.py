"""Resuming on another number of ranks or ZeRO stage through DeepSpeed's universal checkpoint."""

from __future__ import annotations

import torch

from tests.conftest import ok, tuneforge
from tests.reliability.helpers import cut_back, launch, rows, train
from tuneforge.config.run import Run
from tuneforge.runner.start import prepare_run_dir

STEPS = ["trainer.max_steps=12", "trainer.save_every=4", "trainer.keep_last=5", "data.n_train=48"]
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


def test_resume_on_another_topology(tmp_path):
    """One 12-step run on 1 rank (ZeRO-2) moves twice: at step 4 onto 2 ranks (ZeRO-2), and that run at step 8 onto
    1 rank with accumulation (ZeRO-3). Each move is refused with the command that converts the checkpoint, then
    resumes with the same weights and Adam state, and the loss curve goes on as if nothing had moved."""
    ok(train(tmp_path, "full", *STEPS, *TOPOLOGY["zero2x1"]))
    want = [r["loss"] for r in rows(tmp_path / "full")]
    source = tmp_path / "full"
    for leg, (topology, target, step) in enumerate([("zero2x1", "zero2x2", 4), ("zero2x2", "zero3x1", 8)]):
        run = cut_back(source, tmp_path / f"leg{leg}", step)
        ckpt = run / f"checkpoints/step_{step}"
        proc = train(tmp_path, f"leg{leg}", *STEPS, *TOPOLOGY[target], "trainer.resume=auto")
        assert proc.returncode == 2 and f"tuneforge ckpt convert {ckpt}" in proc.stdout + proc.stderr
        ok(tuneforge("ckpt", "convert", str(ckpt), cwd=tmp_path))
        ok(tuneforge("ckpt", "verify", str(ckpt / "universal"), cwd=tmp_path))

        original, moved = dump(tmp_path, f"orig{leg}", topology, ckpt), dump(tmp_path, f"moved{leg}", target, ckpt)
        assert original["step"] == moved["step"] == step and original["state"].keys() == moved["state"].keys()
        for name, state in original["state"].items():
            got = moved["state"][name]
            assert torch.equal(moved["weights"][name], original["weights"][name]), name
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(got[key], state[key]), (name, key)
            assert got["step"] == state["step"] == step

        ok(train(tmp_path, f"leg{leg}", *STEPS, *TOPOLOGY[target], "trainer.resume=auto"))
        got = rows(run)
        assert [r["step"] for r in got] == list(range(1, 13))
        torch.testing.assert_close(torch.tensor([r["loss"] for r in got[step:]]), torch.tensor(want[step:]),
                                   rtol=1e-5, atol=0)
        source = run
