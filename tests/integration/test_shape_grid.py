"""Every `peft=` option, with its defaults, on two model shapes: each cell trains (loss falls) or exits 2 before any
weights load, naming the `peft.` key and a value that works. Zero crashes.

The shapes: `model=tiny_llama` (hidden 64, 4 heads, 2 KV heads: k/v_proj 64 -> 32, MLP 128) and `model=tiny_gqa`
(grouped-query attention, widths that are not powers of two: hidden 96, 3 heads, 1 KV head: k/v_proj 96 -> 32,
MLP 200). Methods that need a partner option get the one their error tells a user to add: `peft=qlora` runs on
`quant=nf4`, `peft=e2e_qp` on `quant=efficientqat`; `peft=mtlora` needs multi-task data (`data.ops=[+,-] data.tasks=[add,sub]`).

Cells run in this process through `tuneforge.cli.main` (one rank runs the Runner in-process), not one interpreter
per cell. Each trains 3 steps on the same 4 quickstart rows (one micro-batch of 4 = the whole training set), so
every step sees the same batch and a working method's loss falls from step 1 to step 3 whatever the noise
between batches would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.cli import main

ROOT = Path(__file__).resolve().parents[2]
METHODS = sorted(p.stem for p in (ROOT / "configs" / "peft").glob("*.yaml"))
MODELS = ["tiny_llama", "tiny_gqa"]
PARTNERS = {"qlora": ["quant=nf4"], "e2e_qp": ["quant=efficientqat"],
            "mtlora": ["data.ops=[+,-]", "data.tasks=[add,sub]"]}
# Cells whose defaults do not fit the model, and the problem the user is told (the rest must train).
REJECTED = {
    ("tiny_llama", "pat"): "peft.r=200 exceeds hidden_size 64: W_down W_downᵀ cannot be the identity; set peft.r <= 64",
    ("tiny_gqa", "pat"): "peft.r=200 exceeds hidden_size 96: W_down W_downᵀ cannot be the identity; set peft.r <= 96",
    ("tiny_llama", "switchlora"): "peft.r=128 exceeds the 32 output features of model.layers.0.self_attn.k_proj: "
                                  "set peft.r <= 32",
    ("tiny_gqa", "switchlora"): "peft.r=128 exceeds the 32 output features of model.layers.0.self_attn.k_proj: "
                                "set peft.r <= 32",
    ("tiny_llama", "bone"): "peft.r=64 does not divide the 32 output features of model.layers.0.self_attn.k_proj "
                            "(and 3 more linears): set peft.r to a divisor of 32, e.g. peft.r=32",
    ("tiny_gqa", "bone"): "peft.r=64 does not divide the 96 input features of model.layers.0.self_attn.q_proj "
                          "(and 13 more linears): set peft.r to a divisor of 8, e.g. peft.r=8",
    ("tiny_llama", "l4q"): "peft.group_size=128 does not divide the 64 input features of "
                           "model.layers.0.self_attn.q_proj (and 11 more linears): set peft.group_size to a divisor "
                           "of 64, e.g. peft.group_size=64",
    ("tiny_gqa", "l4q"): "peft.group_size=128 does not divide the 96 input features of model.layers.0.self_attn.q_proj "
                         "(and 13 more linears): set peft.group_size to a divisor of 8, e.g. peft.group_size=8",
    ("tiny_llama", "e2e_qp"): "quant.group_size=128 does not divide the input features of gate_proj (64), k_proj (64), "
                              "o_proj (64), q_proj (64), up_proj (64), v_proj (64): use quant.group_size=64",
    ("tiny_gqa", "e2e_qp"): "quant.group_size=128 does not divide the input features of down_proj (200), gate_proj (96)"
                            ", k_proj (96), o_proj (96), q_proj (96), up_proj (96), v_proj (96): no supported group "
                            "size (64 or 128) divides them",
}


def test_the_grid_covers_every_method():
    assert len(METHODS) >= 17 and {"lora", "bone", "switchlora", "qlora", "mtlora", "lst", "lisa"} <= set(METHODS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_cell_trains_or_names_the_key(tmp_path, capsys, model, method):
    out = tmp_path / "run"
    code = main(["train", "recipe=quickstart", f"model={model}", f"peft={method}", *PARTNERS.get(method, []),
                 "data.n_train=4", "data.n_eval=2", "trainer.max_steps=3", "trainer.micro_batch_size=4",
                 "trainer.eval_at_start=false", "trainer.max_new_tokens=1", "trainer.nproc=1",
                 f"trainer.output_dir={out}"])
    captured = capsys.readouterr()
    if (model, method) in REJECTED:
        assert code == 2, captured.out[-3000:] + captured.err[-3000:]
        assert REJECTED[model, method] in captured.err, captured.err
        assert not out.exists()  # rejected before the run directory, let alone the model
        return
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
