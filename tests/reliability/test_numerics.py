"""Non-finite loss or gradients: the step is skipped with parameters bitwise unchanged, counted, logged and
checkpointed; trainer.max_bad_steps in a row stop the run with exit code 4."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ok, summary
from tests.reliability.helpers import rows, tensors, train


def module_weights(ckpt):
    return {k: v for k, v in tensors(ckpt).items() if k.startswith("mp_rank_00_model_states.pt/module/")}


@pytest.mark.parametrize("layout", [["trainer.nproc=1", "zero=zero0"], ["trainer.nproc=2", "zero=zero2"]],
                         ids=["1 rank ZeRO-0", "2 ranks ZeRO-2"])
def test_injected_nan_step_is_skipped_with_parameters_unchanged(tmp_path, layout):
    ok(train(tmp_path, "run", *layout, "trainer.max_steps=4", "trainer.save_every=1", "trainer.keep_last=10",
             env={"TUNEFORGE_FAULTS": "nan@loss:step=2"}))  # the 3rd step
    run = tmp_path / "run"
    before, skipped, after = (module_weights(run / f"checkpoints/step_{i}") for i in (2, 3, 4))
    assert before and before.keys() == skipped.keys()
    assert all(torch.equal(before[k], skipped[k]) for k in before), "a skipped step changed parameters"
    assert any(not torch.equal(skipped[k], after[k]) for k in before), "training did not continue"
    logged = rows(run)
    assert [r.get("skipped", False) for r in logged] == [False, False, True, False]
    assert json.loads((run / "checkpoints/step_3/tuneforge.json").read_text())["skipped_steps"] == 1
    assert summary(run)["skipped_steps"] == 1 and summary(run)["status"] == "completed"


def test_consecutive_bad_steps_stop_the_run(tmp_path):
    proc = train(tmp_path, "run", "trainer.max_steps=8", "trainer.max_bad_steps=3",
                 env={"TUNEFORGE_FAULTS": "nan@loss:steps=2-9"})
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = summary(tmp_path / "run")
    assert s["status"] == "diverged" and s["steps"] == 5 and s["skipped_steps"] == 3
    assert "3 consecutive steps with a non-finite loss" in proc.stderr + proc.stdout
