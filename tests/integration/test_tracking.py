"""Trackers and plots with the real libraries: a W&B run in offline mode (read back from its .wandb records) and an
MLflow run in its file store (read back through MlflowClient), interrupted and resumed into the same MLflow run;
no secret reaches either; every run draws plots/loss.png; `tuneforge plot` over runs and over a sweep directory.
Two tiny runs in this process serve every check (module fixtures)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.conftest import metrics, summary, train_here
from tuneforge.cli import main

TINY = ["recipe=quickstart_tiny", "trainer.max_steps=3", "data.n_eval=2", "trainer.max_new_tokens=2"]
CANARIES = {"env": "cnry-env-track-5e1d", "cli": "cnry-cli-track-77aa", "config": "cnry-cfg-track-0b0e"}
SECRETS = [f"model.token={CANARIES['cli']}", f"model.arch.api_key={CANARIES['config']}"]


@pytest.fixture(scope="module")
def env_secret():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", CANARIES["env"])
        yield


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, env_secret):
    import wandb

    run = train_here(*TINY, *SECRETS, "logger=wandb", "optim.lr=1e-3", out=tmp_path_factory.mktemp("w") / "lr1e-3")
    wandb.teardown()  # stop wandb's service process now, not at the suite's exit
    return run


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory, env_secret):
    """An MLflow run stopped by SIGTERM after step 2 (checkpoint, exit 3), then resumed to step 4."""
    out = tmp_path_factory.mktemp("m") / "lr3e-3"
    args = [*TINY, *SECRETS, "logger=mlflow", "logger.project=tf-test", "optim.lr=3e-3", "trainer.max_steps=4"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_FAULTS", "sigterm@step:step=2")
        assert main(["train", *args, f"trainer.output_dir={out}"]) == 3
    stopped = {"status": summary(out)["status"], "png": (out / "plots" / "loss.png").is_file(),
               "tracker": json.loads((out / "tracker.json").read_text()), "mlflow": _mlflow(out).info.status}
    train_here(*args, "trainer.resume=auto", out=out)
    return out, stopped


def _client(run: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(json.loads((run / "tracker.json").read_text())["tracking_uri"])


def _mlflow(run: Path):
    return _client(run).get_run(json.loads((run / "tracker.json").read_text())["run_id"])


def wandb_records(path: Path):
    """The records of a .wandb file (W&B's log format: a 7-byte header, then 32 KiB blocks of records, each
    with a 7-byte header crc32/length/type; a record may span blocks as FIRST/MIDDLE/LAST), parsed with W&B's
    own protobuf class."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, part, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = (b"" if kind in (1, 2) else part) + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST
            record = Record()
            record.ParseFromString(part)
            out.append(record)
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_wandb_offline_run_holds_config_metrics_and_summary(wandb_run):
    state = json.loads((wandb_run / "tracker.json").read_text())
    assert state["tracker"] == "wandb" and state["mode"] == "offline"
    (records_file,) = (wandb_run / "wandb").glob(f"offline-run-*-{state['run_id']}/run-{state['run_id']}.wandb")
    records = wandb_records(records_file)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            history[row["_step"]] = row
    assert {s: history[s]["loss"] for s in (1, 2, 3)} == {r["step"]: r["loss"] for r in metrics(wandb_run) if "loss" in r}
    assert history[3]["eval_loss"] == summary(wandb_run)["eval"]["eval_loss"]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == state["run_id"] and run.project == "quickstart_tiny"
    assert run.display_name == f"quickstart_tiny/{wandb_run.name}"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["optim"]["lr"] == 1e-3 and config["model"]["token"] == "***"
    final = {_key(u): json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "summary"
             for u in r.summary.update}
    assert final["status"] == "completed" and final["steps"] == 3


def test_mlflow_run_is_resumed_and_holds_params_metrics_and_summary(mlflow_run):
    run_dir, stopped = mlflow_run
    assert stopped["status"] == "preempted" and stopped["mlflow"] == "KILLED" and stopped["png"]
    state = json.loads((run_dir / "tracker.json").read_text())
    assert state["run_id"] == stopped["tracker"]["run_id"]  # the resumed run continued the same MLflow run
    assert state["tracking_uri"] == (run_dir / "mlruns").resolve().as_uri()
    client, run = _client(run_dir), _mlflow(run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == f"quickstart_tiny/{run_dir.name}"
    assert client.get_experiment(run.info.experiment_id).name == "tf-test"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["model.token"] == "***"
    assert run.data.tags["status"] == "completed"
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}  # the resumed value wins
    assert logged == {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r} and sorted(logged) == [1, 2, 3, 4]
    assert run.data.metrics["eval_loss"] == summary(run_dir)["eval"]["eval_loss"]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert json.loads((artifacts / "summary.json").read_text())["steps"] == 4
    assert json.loads((artifacts / "config.json").read_text())["trainer"]["max_steps"] == 4


def test_no_secret_reaches_a_tracker(wandb_run, mlflow_run):
    stores = [wandb_run / "wandb", mlflow_run[0] / "mlruns"]
    files = [f for store in stores for f in store.rglob("*") if f.is_file()]
    assert sum(f.suffix == ".wandb" for f in files) == 1 and sum(f.name == "meta.yaml" for f in files) >= 2
    for f in files:
        data = f.read_bytes()
        for where, canary in CANARIES.items():
            assert canary.encode() not in data, f"{where} secret found in {f}"


def test_every_run_draws_its_loss_plot(wandb_run):
    assert png_size(wandb_run / "plots" / "loss.png") == (1200, 450)


def test_plot_runs_and_a_sweep(wandb_run, mlflow_run, tmp_path, capsys):
    runs = [wandb_run, mlflow_run[0]]
    assert main(["plot", *map(str, runs), f"out={tmp_path / 'runs.png'}"]) == 0
    assert f"plot: {tmp_path / 'runs.png'}" in capsys.readouterr().out
    assert png_size(tmp_path / "runs.png") == (1200, 450)

    sweep = tmp_path / "sweep"  # as tuneforge/runner/sweep.py writes it
    sweep.mkdir()
    rows = [{"job": i, "overrides": [*TINY, f"optim.lr={lr}"], "status": "completed", "exit_code": 0,
             "final_train_loss": summary(run)["final_train_loss"], "eval": summary(run)["eval"],
             "run_dir": str(run), "error": None} for i, (lr, run) in enumerate(zip(("1e-3", "3e-3"), runs))]
    (sweep / "sweep_summary.json").write_text(json.dumps(rows))
    assert main(["plot", str(sweep), "metric=exact_match"]) == 0
    assert f"plot: {sweep / 'plots' / 'sweep.png'}" in capsys.readouterr().out
    assert png_size(sweep / "plots" / "sweep.png") == (1200, 900)  # curves above, exact match by optim.lr below


def test_plot_and_tracker_input_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing"), "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "unknown option colour=" in err
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "not a run directory (no metrics.jsonl) nor a sweep directory" in capsys.readouterr().err
    assert main(["show", "recipe=quickstart_tiny", "logger=wandb", "logger.mode=onlin", "logger.tracker=neptune"]) == 2
    err = capsys.readouterr().err
    assert "mode='onlin' is not one of offline, online" in err and "tracker='neptune' is not one of" in err
