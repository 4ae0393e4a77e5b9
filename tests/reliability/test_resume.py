"""Exact resume after pre-emption: SIGTERM on one rank or all ranks, in the middle of a gradient-accumulation
cycle, resumed from the committed checkpoint: the same per-step losses (bitwise), the same samples, the same
final weights and optimizer state as the uninterrupted run; a second signal during the save does no harm."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ok
from tests.reliability.helpers import rows, tensors, train
from tuneforge.runner.checkpoint import complete, verify

LAYOUTS = {"1 rank ZeRO-0": ["trainer.nproc=1", "zero=zero0"], "2 ranks ZeRO-2": ["trainer.nproc=2", "zero=zero2"]}
COMMON = ["trainer.grad_accum=2", "trainer.max_steps=8"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refs")
    return {name: ok(train(tmp, name.replace(" ", "_"), *lay, *COMMON)) and tmp / name.replace(" ", "_")
            for name, lay in LAYOUTS.items()}


def assert_same_run(run, ref):
    got, want = rows(run), rows(ref)
    assert [r["step"] for r in got] == list(range(1, 9))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bitwise
    assert [r["samples"] for r in got] == [r["samples"] for r in want]  # the same samples at every step
    a, b = load_file(str(run / "final/trainable.safetensors")), load_file(str(ref / "final/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta, tb = tensors(run / "checkpoints/step_8"), tensors(ref / "checkpoints/step_8")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), "optimizer state differs"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sigterm_on_one_rank_mid_accumulation_then_exact_resume(tmp_path, refs, layout):
    nproc = 2 if "2 ranks" in layout else 1
    fault = {"TUNEFORGE_FAULTS": f"sigterm@micro:step=3:rank={nproc - 1}"}  # only the last rank is signalled
    proc = train(tmp_path, "run", *LAYOUTS[layout], *COMMON, env=fault)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "run"
    assert [p.name for p in complete(run)] == ["step_4"] and verify(run / "checkpoints/step_4") == []
    assert "resume with trainer.resume=auto" in (run / "train.log").read_text()
    proc = ok(train(tmp_path, "run", *LAYOUTS[layout], *COMMON, "trainer.resume=auto"))
    assert "resumed from" in proc.stdout
    assert_same_run(run, refs[layout])


def test_sigterm_on_all_ranks_with_a_second_signal_during_the_save(tmp_path, refs):
    layout = "2 ranks ZeRO-2"
    fault = {"TUNEFORGE_FAULTS": "sigterm@step:step=3,sigterm@ds_written:step=4"}
    proc = train(tmp_path, "run", *LAYOUTS[layout], *COMMON, env=fault)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "run"
    assert [p.name for p in complete(run)] == ["step_4"] and verify(run / "checkpoints/step_4") == []
    ok(train(tmp_path, "run", *LAYOUTS[layout], *COMMON, "trainer.resume=auto"))
    assert_same_run(run, refs[layout])
