"""The loss is a property of the global batch: however a global batch of 4 is split into micro-batches,
accumulation steps and ranks (ZeRO-0, -2, -3), each step's loss and the trained weights are those of one big
batch. The samples range from 5 to 200 trained tokens, so any normalisation per micro-batch would show.

Float rounding differs between splits (sums run in another order, on other shapes), and Adam amplifies it where
a gradient is ~0: it moves such a parameter by ~lr * g / eps. At the recipe's lr=3e-3 and eps=1e-8 that alone
moves a few weights by ~5e-5 over 10 steps, so these runs use lr=1e-3 and eps=1e-6.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import check_export, ok, summary, train_here, train_losses, tuneforge

COMMON = ["recipe=quickstart_tiny", "data=jsonl", "data.eval_split=2", "trainer.max_steps=10",
          "trainer.eval_at_start=false", "optim.lr=1e-3", "optim.eps=1e-6"]
ONE_BATCH = ["trainer.nproc=1", "trainer.micro_batch_size=4", "trainer.grad_accum=1"]
SPLITS = {
    "micro 2 x accum 2": ["trainer.nproc=1", "trainer.micro_batch_size=2", "trainer.grad_accum=2"],
    "micro 2 x 2 ranks zero2": ["trainer.nproc=2", "trainer.micro_batch_size=2", "trainer.grad_accum=1", "zero=zero2"],
    "micro 1 x accum 2 x 2 ranks zero3": ["trainer.nproc=2", "trainer.micro_batch_size=1", "trainer.grad_accum=2",
                                          "zero=zero3"],
}
METHODS = {"full": ["peft=full"], "lisa": ["peft=lisa", "peft.gamma=1", "peft.period=4"],
           "lora": ["peft=lora", "peft.dropout=0"]}
PACKED = ["data.packing=true", "data.max_length=256"]
WORDS = "red green blue cat dog sun moon tree river stone bird fish".split()
RESPONSE_WORDS = [3, 198, 5, 120, 4, 60, 30, 170, 6, 90, 15, 150, 3, 45, 75, 9, 100, 20, 140, 8, 50, 12, 180, 25, 7, 33]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tokenizer):
    from tuneforge import registry
    from tuneforge.config.compose import build_specs, compose
    from tuneforge.data.encode import encode

    workdir = tmp_path_factory.mktemp("split")
    path = workdir / "train.jsonl"
    rng = random.Random(0)
    rows = [{"prompt": f"list {i}", "response": " ".join(rng.choice(WORDS) for _ in range(n))}
            for i, n in enumerate(RESPONSE_WORDS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = build_specs(compose([*COMMON, f"data.path={path}"]))["data"]
    loaded = registry.build("data", spec).load(0)
    tokens = [s.trained_tokens for s in encode(loaded.train, tokenizer, spec, loaded.report)]
    assert len(tokens) == 24 and min(tokens) <= 6 and max(tokens) >= 190, tokens
    return workdir, path


@pytest.fixture(scope="module")
def run(data):
    """run(name, *overrides) -> run directory; each distinct run happens once per module (1 rank: in this process)."""
    workdir, path = data
    done = {}

    def get(name: str, *overrides: str):
        if name not in done:
            out = workdir / name.replace(" ", "_")
            if "trainer.nproc=1" in overrides:
                train_here(*COMMON, f"data.path={path}", *overrides, out=out)
            else:
                ok(tuneforge("train", *COMMON, f"data.path={path}", *overrides, f"trainer.output_dir={out}",
                             cwd=workdir))
            done[name] = out
        return done[name]

    return get


def assert_same_training(got, ref, tol=1e-5):
    losses, want = train_losses(got), train_losses(ref)
    assert len(losses) == len(want) == 10
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want), rtol=0, atol=tol)
    weights, ref_weights = (load_file(str(r / "final" / "trainable.safetensors")) for r in (got, ref))
    assert weights.keys() == ref_weights.keys() and weights
    for name, w in weights.items():
        torch.testing.assert_close(w, ref_weights[name], rtol=0, atol=tol, msg=lambda m, n=name: f"{n}: {m}")
    # evaluation is token-weighted too: the same weights give the same eval loss on 1 or 2 ranks
    assert summary(got)["eval"]["eval_loss"] == pytest.approx(summary(ref)["eval"]["eval_loss"], abs=tol)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("method", list(METHODS))
def test_split_trains_like_one_big_batch(run, method, split):
    ref = run(f"{method} one batch", *METHODS[method], *ONE_BATCH)
    got = run(f"{method} {split}", *METHODS[method], *SPLITS[split])
    assert summary(got)["world_size"] == (2 if "ranks" in split else 1)
    assert_same_training(got, ref)


def test_zero3_run_exports_the_gathered_weights(run):
    """Export reads the trained weights gathered from the ZeRO-3 partitions of 2 ranks."""
    check_export(run("full micro 1 x accum 2 x 2 ranks zero3", *METHODS["full"],
                     *SPLITS["micro 1 x accum 2 x 2 ranks zero3"]))


def test_packed_split_trains_like_one_big_batch(run):
    """Packed sequences hold different numbers of trained tokens; the split still does not matter."""
    ref = run("packed one batch", *PACKED, *ONE_BATCH)
    got = run("packed micro 1 x accum 4", *PACKED, "trainer.nproc=1", "trainer.micro_batch_size=1",
              "trainer.grad_accum=4")
    assert "packed" in (ref / "train.log").read_text()
    assert_same_training(got, ref)
