"""precision.frozen_in_compute: under bf16 autocast a LoRA run stores its frozen base linears in bf16. Autocast
would cast those fp32 weights to bf16 on every forward anyway, so training must be bit-identical to the plain
autocast path (the reference: the same run with frozen_in_compute=false), while the weights take half the bytes,
and the export (rebuilt with the base rounded as training used it) must reproduce the trained model.
Where the numbers could change (DoRA reads the base for its norms, LISA and full train the base, a tied head is
also the embedding, ZeRO-3 partitions at load, a selector runs the model outside autocast), nothing is cast."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import check_export, train_here, train_losses
from tuneforge.config.compose import build_specs, compose

RUN = ["recipe=quickstart_tiny", "precision=bf16", "trainer.max_steps=3", "data.n_train=24", "trainer.save_every=0",
       "trainer.eval_at_start=false", "data.n_eval=4", "trainer.max_new_tokens=2"]


def test_frozen_base_in_bf16_trains_bit_identically_to_plain_autocast(tmp_path):
    stored = train_here(*RUN, out=tmp_path / "stored")
    plain = train_here(*RUN, "precision.frozen_in_compute=false", out=tmp_path / "plain")
    log = (stored / "train.log").read_text()
    assert "frozen linears in bf16" in log and "frozen linears" not in (plain / "train.log").read_text()
    assert train_losses(stored) == train_losses(plain)  # exactly, not within a tolerance
    a, b = (load_file(r / "final" / "trainable.safetensors") for r in (stored, plain))
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k
    model, _ = check_export(stored)  # the probe (fp32, after training) against the exported merged model
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_frozen_linears_are_bf16_and_everything_else_keeps_its_dtype(tmp_path):
    from tuneforge.config.run import Run
    from tuneforge.runner.runner import Runner
    from tuneforge.runner.start import prepare_run_dir

    run = Run.compose([*RUN, f"trainer.output_dir={tmp_path}"])
    prepare_run_dir(run)
    r = Runner(run)
    for phase in (r.setup, r.select_data, r.build_model):
        phase()
    try:
        lm = r.objective.lm
        head, embed = lm.get_output_embeddings().weight, lm.get_input_embeddings().weight
        assert head is embed and head.dtype == torch.float32  # tied: the embedding lookup reads it too
        stored = [n for n, p in lm.named_parameters() if p.dtype == torch.bfloat16]
        assert len(stored) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
        for n, p in lm.named_parameters():
            assert (p.dtype == torch.bfloat16) == (n.endswith("base_layer.weight") and not p.requires_grad), n
    finally:
        r.teardown()


@pytest.mark.parametrize("over,stored", [
    ([], "bf16"),
    (["peft=rslora"], "bf16"),
    (["peft=dora"], None),  # the magnitude's norm reads the base weight
    (["peft=lisa"], None),  # trains base layers
    (["peft=full"], None),
    (["zero=zero3"], None),
    (["precision=fp32"], None),
    (["precision.params=bf16"], None),  # already stored in bf16
    (["precision.frozen_in_compute=false"], None),
    (["precision=coat", "precision.compute=bf16"], None),  # its own linears cast the weights
])
def test_which_runs_store_the_frozen_base_in_the_compute_dtype(over, stored):
    specs = build_specs(compose([*RUN, *over]))
    zero_stage = 3 if "zero=zero3" in over else 0
    assert specs["precision"].frozen_dtype(specs["peft"].caps, zero_stage) == stored


def test_a_selector_that_scores_with_the_model_keeps_the_base_in_fp32(tmp_path):
    """It runs the model outside autocast, where bf16 weights would meet fp32 activations: the base is rounded
    (the same numbers) but stays in fp32 storage."""
    run = train_here(*RUN, "selection=loss", "selection.fraction=0.5", out=tmp_path / "run")
    assert "frozen linears rounded to bf16" in (run / "train.log").read_text() and len(train_losses(run)) == 3
