"""LISA's defining properties, on real DeepSpeed engines (gloo on CPU), ZeRO 0-3, 1 and 2 ranks:

- only parameters of sampled layers and of the always-trained modules change; all others stay bitwise equal;
  every sampled layer actually changes;
- after every switch the engine holds optimizer state only for the active set (per parameter, and in total);
- every layout (ZeRO 0-3, 1 or 2 ranks, with or without accumulation) follows the loss curve of one big batch
  (1 rank, ZeRO-0, one micro-batch of the whole global batch);
- resuming in the middle of a period reproduces the uninterrupted run.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import ok, spawn_ranks, train_losses, tuneforge
from tuneforge.config.run import Run
from tuneforge.runner.start import prepare_run_dir

PERIOD = 2
BASE = ["recipe=quickstart_tiny", "peft=lisa", "peft.gamma=2", f"peft.period={PERIOD}", "model.arch.num_hidden_layers=6",
        "trainer.max_steps=6", "trainer.eval_at_start=false", "data.n_eval=2",
        "trainer.max_new_tokens=2", "zero.reduce_bucket_size=1000000"]


def probe(tmp_path, nproc: int, *overrides: str, micro: int = 2) -> tuple[list[dict], list[float]]:
    accum = 4 // (micro * nproc)  # global batch 4 in every layout
    run = Run.compose([*BASE, f"trainer.nproc={nproc}", f"trainer.micro_batch_size={micro}",
                       f"trainer.grad_accum={accum}", *overrides])
    run_dir = prepare_run_dir(run, tmp_path / "run")
    spawn_ranks("tests.contracts.lisa_probe", run_dir, nproc)
    return torch.load(run_dir / "probe.pt", weights_only=False), train_losses(run_dir)


def check_only_sampled_layers_change(records, bf16: bool = False):
    by_layer = {}
    for rec in records:
        for n in rec["params"]:
            if ".layers." in n:
                by_layer.setdefault(int(n.split(".layers.")[1].split(".")[0]), []).append(n)
    for before, after in zip(records, records[1:]):
        changed = {n for n, t in before["params"].items() if not torch.equal(t, after["params"][n])}
        active = set(before["active"])
        assert changed <= active, f"step {before['step']}: frozen parameters changed: {sorted(changed - active)[:5]}"
        for layer in before["layers"]:
            assert any(n in changed for n in by_layer[layer]), f"step {before['step']}: sampled layer {layer} did not change"
        always = [n for n in active if ".layers." not in n]
        if not bf16:  # a bf16 weight may not move when the update is below its resolution (the fp32 master does)
            assert all(n in changed for n in always), f"step {before['step']}: always-trained modules did not change"
    periods = {tuple(r["layers"]) for r in records}
    assert len(periods) >= 2, "the active set never switched"


def check_state_only_for_active_set(records):
    # Step 0 comes before any optimizer step: Adam creates its moments lazily, so counts start at step 1.
    for rec in records[:-1]:  # the last record is taken at save time, after the final step
        active, stateful = set(rec["active"]), set(rec["stateful"])
        assert stateful <= active, f"step {rec['step']}: optimizer state for inactive {sorted(stateful - active)[:5]}"
        switch_step = rec["step"] % PERIOD == 0
        if rec["kind"] != "plain" or not switch_step:  # plain torch AdamW creates state at a layer's first step
            assert stateful == active, f"step {rec['step']}: no state for {sorted(active - stateful)[:5]}"
        a, w = sum(rec["numel"][n] for n in active), rec["world"]
        if rec["step"] == 0:
            continue
        if rec["kind"] == "plain" and not switch_step:  # replicated on each rank: two Adam moments
            assert rec["held"] == w * 2 * a, (rec["held"], a)
        elif rec["kind"] == "unfused":  # replicated on each rank: fp32 master + two moments
            assert rec["held"] == w * 3 * a, (rec["held"], a)
        elif rec["kind"] != "plain":  # partitioned over ranks: fp32 master + two moments (+ alignment padding)
            assert 3 * a <= rec["held"] <= 3 * a + 3 * 4096, (rec["held"], a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One big batch: 1 rank, ZeRO-0, a single micro-batch of 4."""
    return probe(tmp_path_factory.mktemp("ref"), 1, micro=4)


CASES = {
    "zero0 x2": (2, ["zero=zero0"]),
    "zero1 x2": (2, ["zero=zero1"]),
    "zero2 x1": (1, ["zero=zero2"]),
    "zero2 x2": (2, ["zero=zero2"]),
    "zero3 x1": (1, ["zero=zero3"]),
    "zero3 x2": (2, ["zero=zero3"]),
    "zero2 optimizer offload x2": (2, ["zero=zero2_offload"]),
    "zero3 gradient checkpointing x2": (2, ["zero=zero3", "model.gradient_checkpointing=true"]),
}


def test_reference_zero0_one_batch(reference):
    records, losses = reference
    check_only_sampled_layers_change(records)
    check_state_only_for_active_set(records)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("case", list(CASES))
def test_lisa_under_zero(tmp_path, reference, case):
    nproc, overrides = CASES[case]
    records, losses = probe(tmp_path, nproc, *overrides)
    check_only_sampled_layers_change(records)
    check_state_only_for_active_set(records)
    assert [r["layers"] for r in records] == [r["layers"] for r in reference[0]]  # same sampling on every layout
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference[1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    ["zero=zero0", "precision=bf16", "precision.params=bf16"],  # DeepSpeed's unfused bf16 engine
    ["zero=zero1", "precision=bf16", "precision.params=bf16"],  # BF16_Optimizer
    ["zero=zero2", "peft.embed=freeze", "peft.head=freeze", "peft.norm=freeze"],
    ["zero=zero3", "peft.sampling=weighted"],
], ids=["bf16 zero0", "bf16 zero1", "embed+head+norm frozen zero2", "weighted zero3"])
def test_lisa_variants(tmp_path, overrides):
    records, losses = probe(tmp_path, 1, *overrides)
    check_only_sampled_layers_change(records, bf16="precision=bf16" in overrides)
    check_state_only_for_active_set(records)
    if "peft.embed=freeze" in overrides:
        assert all(".layers." in n for r in records for n in r["active"])


def test_resume_mid_period_reproduces_run(tmp_path):
    common = [*BASE, "trainer.max_steps=8", "peft.period=3", "trainer.save_every=4", "trainer.nproc=2",
              "trainer.micro_batch_size=2", "trainer.grad_accum=1", "zero=zero2"]
    src = tmp_path / "full"
    ok(tuneforge("train", *common, f"trainer.output_dir={src}", cwd=tmp_path))
    dst = tmp_path / "resumed"
    shutil.copytree(src, dst)
    assert (dst / "checkpoints" / "step_4" / "trained_frozen.safetensors").is_file()  # layers of period 0
    shutil.rmtree(dst / "checkpoints" / "step_8")
    shutil.rmtree(dst / "final")
    (dst / "summary.json").unlink()
    (dst / "metrics.jsonl").write_text("".join(ln + "\n" for ln in (src / "metrics.jsonl").read_text().splitlines()
                                               if '"loss"' in ln and int(ln.split('"step": ')[1].split(",")[0]) <= 4))
    proc = ok(tuneforge("train", *common, f"trainer.output_dir={dst}", "trainer.resume=auto", cwd=tmp_path))
    assert "resumed from" in proc.stdout
    torch.testing.assert_close(torch.tensor(train_losses(dst)), torch.tensor(train_losses(src)), rtol=1e-6, atol=1e-6)


def test_lisa_tiny_recipe_exports_every_trained_layer(tmp_path):
    """The final weights hold every layer trained in any period (not only the last active set): the exported
    model reproduces the trained model's logits (2 ranks, ZeRO-3: weights gathered from partitions). Its losses
    are the pinned ones (tests/golden/lisa_tiny.json)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.conftest import run_dir_of, summary
    from tests.golden import runs as golden

    run = run_dir_of(ok(tuneforge("train", *golden.ARGS["lisa_tiny"], cwd=tmp_path)))
    assert summary(run)["world_size"] == 2
    golden.check("lisa_tiny", train_losses(run))
    saved = load_file(str(run / "final" / "trainable.safetensors"))
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in saved if ".layers." in n}
    assert len(layers) > 2  # three periods, several layers trained over the run
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    probe = load_file(str(run / "final" / "probe.safetensors"))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(run / "export").eval()(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-5, atol=1e-5)


def test_weighted_resume_at_period_boundary_reproduces_run(tmp_path):
    """sampling=weighted under ZeRO-3 on 2 ranks (update norms summed over shards): the importance estimate and
    the measurement under way travel in the checkpoint, so resuming at a period boundary reproduces the
    uninterrupted run's draws, estimates and losses."""
    import json

    common = [*BASE, "peft.sampling=weighted", "trainer.max_steps=8", "peft.period=2", "trainer.save_every=4",
              "trainer.nproc=2", "trainer.micro_batch_size=2", "trainer.grad_accum=1", "zero=zero3"]
    src = tmp_path / "full"
    ok(tuneforge("train", *common, f"trainer.output_dir={src}", cwd=tmp_path))
    dst = tmp_path / "resumed"
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_8", ignore_errors=True)
    shutil.rmtree(dst / "final")
    (dst / "summary.json").unlink()
    rows = [json.loads(ln) for ln in (src / "metrics.jsonl").read_text().splitlines()]
    keep = [json.dumps(r) for r in rows if r["step"] < 4 or ("loss" in r and r["step"] == 4)]  # lisa logs step 4 after it
    (dst / "metrics.jsonl").write_text("".join(ln + "\n" for ln in keep))
    proc = ok(tuneforge("train", *common, f"trainer.output_dir={dst}", "trainer.resume=auto", cwd=tmp_path))
    assert "resumed from" in proc.stdout

    def draws(run):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["lisa_active"], r["lisa_importance"]) for r in rows if "lisa_importance" in r]

    full = draws(src)
    assert len(full) == 3 and len({tuple(a) for _, a, _ in full}) >= 2
    assert len({round(v, 12) for v in full[-1][2]}) > 1  # measured, not uniform
    assert draws(dst) == full
    torch.testing.assert_close(torch.tensor(train_losses(dst)), torch.tensor(train_losses(src)), rtol=1e-6, atol=1e-6)
