"""Checkpoints that cannot be half-written, cannot be silently damaged, and cannot run code."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, ok, tuneforge
from tests.reliability.helpers import TINY, cut_back, rows, train
from tuneforge.runner.checkpoint import _sha256, complete, verify

SAVES = ["trainer.save_every=2", "trainer.max_steps=6", "trainer.keep_last=3"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    ok(train(tmp, "ref", *SAVES))
    return tmp / "ref"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    ok(train(tmp, "ref", *SAVES, "trainer.nproc=2", "zero=zero2"))
    return tmp / "ref"


@pytest.mark.parametrize("stage", ["writing", "ds_written", "manifest_written", "committed"])
def test_kill9_at_every_stage_of_a_save(tmp_path, one_rank, stage):
    proc = train(tmp_path, "run", *SAVES, env={"TUNEFORGE_FAULTS": f"kill@{stage}:step=4"})
    assert proc.returncode == -9
    run = tmp_path / "run"
    committed = [p.name for p in complete(run)]
    assert committed == (["step_2", "step_4"] if stage == "committed" else ["step_2"])
    proc = ok(train(tmp_path, "run", *SAVES, "trainer.resume=auto"))
    resumed_from = "step_4" if stage == "committed" else "step_2"
    assert f"resumed from {run}/checkpoints/{resumed_from}" in proc.stdout
    if stage in ("ds_written", "manifest_written"):
        assert "incomplete checkpoint moved to" in proc.stdout
        assert [p.name.split("-")[0] for p in (run / "checkpoints/quarantine").iterdir()] == ["incoming"]
    assert all(verify(p) == [] for p in complete(run))
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(one_rank)]


def _damage(ckpt, how):
    if how == "flip a byte":
        f = next(ckpt.glob("zero_pp_rank_1_*optim_states.pt"))
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif how == "truncate a shard":
        f = ckpt / "mp_rank_00_model_states.pt"
        f.write_bytes(f.read_bytes()[:1000])
    else:
        f = next(ckpt.glob("zero_pp_rank_1_*optim_states.pt"))
        f.unlink()
    return f


@pytest.mark.parametrize("how", ["flip a byte", "truncate a shard", "delete one rank's file"])
def test_damaged_checkpoint_is_named_by_verify_and_refused(tmp_path, two_ranks, how):
    run = tmp_path / "run"
    shutil.copytree(two_ranks, run)
    damaged = _damage(run / "checkpoints/step_6", how)
    proc = tuneforge("ckpt", "verify", str(run), cwd=tmp_path)
    assert proc.returncode == 2 and str(damaged) in proc.stdout
    assert re.search(r"ok .*step_4", proc.stdout)  # the others are intact
    proc = train(tmp_path, "run", *SAVES, "trainer.nproc=2", "zero=zero2", "trainer.resume=auto")
    assert proc.returncode == 2 and str(damaged) in proc.stdout + proc.stderr
    assert "refusing to resume" in proc.stdout + proc.stderr


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("target", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
@pytest.mark.parametrize("manifest", ["left as it was", "rewritten to match"])
def test_planted_pickle_payload_never_runs(tmp_path, one_rank, target, manifest):
    run = cut_back(one_rank, tmp_path / "run", 4)
    ckpt, marker = run / "checkpoints/step_4", tmp_path / "pwned"
    (ckpt / target).write_bytes(pickle.dumps({"state": Payload(marker)}))
    if manifest == "rewritten to match":  # an attacker who also rewrote the manifest
        meta = json.loads((ckpt / "tuneforge.json").read_text())
        meta["files"][target] = {"size": (ckpt / target).stat().st_size, "sha256": _sha256(ckpt / target)}
        (ckpt / "tuneforge.json").write_text(json.dumps(meta))
    proc = train(tmp_path, "run", *SAVES, "trainer.resume=auto")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert not marker.exists(), "the payload ran"
    damaged = re.search(r"(corrupt|truncated or resized) file: \S*" + re.escape(target), out)
    assert damaged if manifest == "left as it was" else ("refusing to load" in out and target in out), out[-3000:]


def test_disk_full_during_save_names_step_path_cause_and_keeps_previous(tmp_path):
    proc = train(tmp_path, "run", *SAVES, env={"TUNEFORGE_FAULTS": "enospc@save:step=4"})
    assert proc.returncode == 1
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "step 4" in log and ".incoming-step_4" in log and "No space left on device" in log
    assert "step_2 is intact" in log
    assert [p.name for p in complete(run)] == ["step_2"] and verify(run / "checkpoints/step_2") == []
    assert not list((run / "checkpoints").glob(".incoming*"))
    ok(train(tmp_path, "run", *SAVES, "trainer.resume=auto"))


def test_no_unsafe_torch_load_in_package_code():
    offenders = []
    for f in (ROOT / "tuneforge").rglob("*.py"):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_model_needing_remote_code_is_refused_by_default(tmp_path):
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "tuneforge_custom", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}))
    proc = tuneforge("train", *TINY, "model.init=pretrained", f"model.path={model}",
                     cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "model.trust_remote_code=true" in out, out[-2000:]
