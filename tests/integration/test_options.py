"""Each config option actually runs: a short real run of the tiny recipe per combination of options."""

from __future__ import annotations

import json

import pytest

from tests.conftest import metrics, summary, train_here, train_losses

TINY = ["recipe=quickstart_tiny", "trainer.max_steps=3", "trainer.eval_at_start=false"]
EXAMPLES = "pkg://tuneforge/data/examples"

RUNS = {
    "text+packing+random selection+freeze+tensorboard": [
        "data=text", f"data.path={EXAMPLES}/text.txt", "data.max_length=96", "data.eval_split=2",
        "selection=random", "selection.fraction=0.5", "peft=freeze", "peft.layers=[-1]", "logger=tensorboard",
        "trainer.micro_batch_size=2"],
    "sharegpt chat + bf16 autocast + adamw8bit": [
        "data=sharegpt", f"data.path={EXAMPLES}/sharegpt.jsonl", "data.eval_split=2", "precision=bf16",
        "optim=adamw8bit", "peft=full", "trainer.micro_batch_size=2"],
    "bf16 weights (DeepSpeed bf16 engine) + zero1 + linear schedule": [
        "precision=bf16", "precision.params=bf16", "zero=zero1", "sched=linear", "peft=full"],
    "zero2 optimizer offload (DeepSpeedCPUAdam)": ["zero=zero2_offload", "peft=full"],
    "zero3 param+optimizer offload, lora": ["zero=zero3_offload", "peft=lora"],
    "qa data with its answer checker": [
        "data=qa", f"data.path={EXAMPLES}/qa.jsonl", "data.eval_split=2", "data.max_length=256",
        "trainer.micro_batch_size=2", "trainer.max_new_tokens=8"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_option_combination_runs(tmp_path, name):
    run = train_here(*TINY, *RUNS[name], out=tmp_path / "run")
    s = summary(run)
    assert s["status"] == "completed" and s["steps"] == 3 and len(train_losses(run)) == 3
    assert all(isinstance(x, float) and x == x for x in train_losses(run))
    assert "eval_loss" in s["eval"]
    if "tensorboard" in name:
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        assert "sequences, packed" in (run / "train.log").read_text()
    if "qa" in name:
        assert "exact_match" in s["eval"]
    if "offload" in name:
        ds = json.loads((run / "ds_config.json").read_text())
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert metrics(run)[0]["step"] == 1
