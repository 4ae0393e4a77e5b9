"""Real end-to-end runs of the tiny recipes through the CLI: real DeepSpeed (gloo on CPU), 1 and 2 ranks (1-rank
runs in this process). That 2 ranks under ZeRO-2 and ZeRO-3 train like one big batch, for full fine-tuning, LISA
and LoRA, is tests/integration/test_split_invariance.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import check_export, metrics, ok, run_dir_of, summary, train_here, train_losses, tuneforge
from tuneforge.cli import main

# Same global batch (4) in every layout: one big batch (1 rank, one micro-batch of 4), or 2 ranks x 2 micro.
COMMON = ["recipe=quickstart_tiny", "trainer.max_steps=8", "trainer.eval_at_start=false", "data.n_eval=4"]
ONE_RANK = ["trainer.nproc=1", "trainer.micro_batch_size=4", "trainer.grad_accum=1"]
TWO_RANKS = ["trainer.nproc=2", "trainer.micro_batch_size=2", "trainer.grad_accum=1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def single(workdir):
    """1-rank ZeRO-0 runs of full fine-tuning and LoRA on one big batch (the references)."""
    return {peft: train_here(*COMMON, *ONE_RANK, f"peft={peft}", "trainer.save_every=4", out=workdir / f"single_{peft}")
            for peft in ("full", "lora")}


@pytest.mark.parametrize("peft", ["full", "lora"])
def test_single_rank_run_learns_and_writes_run_dir(single, peft):
    run = single[peft]
    for name in ("config.yaml", "ds_config.json", "metrics.jsonl", "summary.json", "train.log"):
        assert (run / name).is_file(), name
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all({"step", "loss", "lr", "tokens_per_s"} <= set(r) for r in rows)
    losses = train_losses(run)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    s = summary(run)
    assert s["status"] == "completed" and s["steps"] == 8 and s["final_train_loss"] == losses[-1]
    assert "eval_loss" in s["eval"] and "exact_match" in s["eval"] and s["peak_memory_mb"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_4", "step_8"]
    assert (run / "checkpoints" / "step_8" / "tuneforge.json").is_file()
    trained = load_file(str(run / "final" / "trainable.safetensors"))
    assert (all("lora_" in k for k in trained) if peft == "lora" else "model.embed_tokens.weight" in trained)


def test_export_full_round_trip(single):
    check_export(single["full"])
    assert not (single["full"] / "export" / "adapter").exists()


def test_export_lora_merged_and_adapter(single):
    from peft import PeftModel

    from tuneforge.config.compose import build_specs, load_run_config
    from tuneforge.models.load import load_model, load_tokenizer

    run = single["lora"]
    _, probe = check_export(run)
    specs = build_specs(load_run_config(run))
    base = load_model(specs["model"], seed=specs["trainer"].seed, vocab_size=len(load_tokenizer(specs["model"])))
    peft_model = PeftModel.from_pretrained(base, run / "export" / "adapter").eval()
    with torch.no_grad():
        logits = peft_model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


def test_eval_command_reproduces_final_eval(single):
    import json

    run = single["lora"]
    assert main(["eval", f"run_dir={run}"]) == 0
    row = json.loads((run / "eval.json").read_text())
    final = summary(run)["eval"]
    assert row["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    assert row["exact_match"] == final["exact_match"] and row["eval_n"] == final["eval_n"]


def test_resume_auto_continues_latest_checkpoint_exactly(single, workdir):
    """Cut the 8-step run back to its step-4 checkpoint; resuming reproduces steps 5-8."""
    src = single["full"]
    dst = workdir / "resumed"
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_8")
    shutil.rmtree(dst / "final")
    (dst / "summary.json").unlink()
    rows = [ln for ln in (dst / "metrics.jsonl").read_text().splitlines() if '"step": 4,' in ln or
            any(f'"step": {i},' in ln for i in range(1, 4))]
    (dst / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    with open(dst / "train.log", "w"):  # only what the resumed run prints
        pass
    train_here(*COMMON, *ONE_RANK, "peft=full", "trainer.save_every=4", "trainer.resume=auto", out=dst)
    log = (dst / "train.log").read_text()
    assert "resumed from" in log and "step_4" in log
    torch.testing.assert_close(torch.tensor(train_losses(dst)), torch.tensor(train_losses(src)), rtol=1e-6, atol=1e-6)
    assert summary(dst)["steps"] == 8


def test_pretrained_directory_loads_into_zero3_partitions(workdir, tiny_model_factory, tokenizer):
    """A local Hugging Face directory, loaded as pretrained: under ZeRO-3 it is built straight into partitions
    (zero.Init); the 2-rank loss curve matches one big batch on 1 rank (ZeRO-0)."""
    model_dir = workdir / "tiny_hf"
    tiny_model_factory(5).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    base = [*COMMON, "model.init=pretrained", f"model.path={model_dir}", "model.tokenizer=null", "peft=lora"]
    ref = train_here(*base, *ONE_RANK, out=workdir / "pretrained_one_rank")
    got = run_dir_of(ok(tuneforge("train", *base, *TWO_RANKS, "zero=zero3", cwd=workdir)))
    torch.testing.assert_close(torch.tensor(train_losses(got)), torch.tensor(train_losses(ref)), rtol=1e-5, atol=1e-5)
    check_export(got)


def test_two_nodes_match_one_node_of_two_ranks(single, workdir):
    """launcher.nnodes=2: the same command on each "node" (two launchers on 127.0.0.1, node ranks 0 and 1, one
    rank each, a fixed rendezvous port) makes one world of 2 ranks; its loss curve is the 1-rank reference's."""
    import subprocess
    import sys

    from tuneforge.distributed.dist import free_port

    out = workdir / "two_nodes"
    args = [*COMMON, *TWO_RANKS, "trainer.nproc=1", "peft=full", "launcher.nnodes=2", f"launcher.master_port={free_port()}",
            f"trainer.output_dir={out}"]
    nodes = [subprocess.Popen([sys.executable, "-m", "tuneforge", "train", *args, f"launcher.node_rank={i}"], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(log[-3000:] for log in logs)
    assert summary(out)["world_size"] == 2
    # The command line restarted on jemalloc where installed and its ranks inherited it; the reference ran in this
    # process on the C library's malloc: the allocator does not change the numbers.
    from tuneforge.hardware import jemalloc_library

    assert summary(out)["allocator"] == ("jemalloc" if jemalloc_library() else "system")
    torch.testing.assert_close(torch.tensor(train_losses(out)), torch.tensor(train_losses(single["full"])),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_real_launchers_match_one_big_batch(single, workdir, launcher):
    """torchrun (torch.distributed.run) and DeepSpeed's runner over a one-host hostfile (`localhost slots=2`)
    start the same 2 ranks: the loss curve is the 1-rank reference's."""
    extra = ["launcher=torchrun"]
    if launcher == "deepspeed":
        (workdir / "hostfile").write_text("localhost slots=2\n")
        extra = ["launcher=deepspeed", f"launcher.hostfile={workdir / 'hostfile'}"]
    got = run_dir_of(ok(tuneforge("train", *COMMON, *TWO_RANKS, "peft=full", *extra, cwd=workdir)))
    assert summary(got)["world_size"] == 2
    torch.testing.assert_close(torch.tensor(train_losses(got)), torch.tensor(train_losses(single["full"])),
                               rtol=1e-5, atol=1e-5)
