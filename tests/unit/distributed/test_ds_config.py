"""The DeepSpeed JSON is a pure function of the config groups."""

from __future__ import annotations

import json

from tuneforge.config.compose import build_specs, compose
from tuneforge.distributed.ds_config import ds_config, with_override


def ds(*overrides, world=1):
    return ds_config(build_specs(compose(list(overrides))), world)


def test_batch_math_and_defaults():
    c = ds("trainer.micro_batch_size=3", "trainer.grad_accum=5", world=4)
    assert c["train_micro_batch_size_per_gpu"] == 3 and c["gradient_accumulation_steps"] == 5
    assert c["train_batch_size"] == 60 and c["zero_optimization"]["stage"] == 0
    assert c["optimizer"]["type"] == "AdamW" and c["optimizer"]["params"]["torch_adam"] is True
    assert "bf16" not in c and "fp16" not in c
    assert ds() == ds()  # pure: same input, same output


def test_zero_presets():
    assert ds("zero=zero2")["zero_optimization"]["stage"] == 2
    z3 = ds("zero=zero3")["zero_optimization"]
    assert z3["stage"] == 3 and "stage3_prefetch_bucket_size" in z3
    off = ds("zero=zero3_offload")
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert off["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert off["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam runs offloaded states
    nvme = ds("zero=zero3_nvme", "zero.nvme_path=/tmp")["zero_optimization"]
    assert nvme["offload_param"] == {"device": "nvme", "pin_memory": False, "nvme_path": "/tmp"}


def test_precision_and_optimizer_sections():
    assert ds("precision=bf16").get("bf16") is None  # autocast only: fp32 weights
    assert ds("precision=bf16", "precision.params=bf16")["bf16"] == {"enabled": True, "check_grad_overflow": True}
    fp16 = ds("precision=fp16", "trainer.device=cuda")["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0
    c = ds("optim=adamw8bit", "optim.grad_clip=0.5")
    assert "optimizer" not in c and c["zero_allow_untested_optimizer"] and c["gradient_clipping"] == 0.5


def test_raw_json_override_deep_merges(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 123}, "extra": 1}))
    c = with_override(ds("zero=zero2"), str(path))
    assert c["zero_optimization"]["stage"] == 2 and c["zero_optimization"]["reduce_bucket_size"] == 123
    assert c["extra"] == 1


def test_world_size_is_nodes_times_ranks_per_node():
    from tuneforge.config.run import Run
    from tuneforge.distributed.ds_config import run_ds_config

    run = Run.compose(["trainer.micro_batch_size=3", "trainer.grad_accum=2", "trainer.nproc=4", "launcher.nnodes=2",
                       "launcher.master_port=29500"])
    assert (run.nodes, run.ranks_per_node, run.world_size) == (2, 4, 8)
    assert run_ds_config(run)["train_batch_size"] == 3 * 2 * 8


def test_several_nodes_need_a_fixed_rendezvous_port():
    import pytest

    from tuneforge.errors import InputError

    with pytest.raises(InputError) as e:
        compose(["launcher.nnodes=2", "launcher.node_rank=2"])
    text = e.value.render()
    assert "set launcher.master_port" in text and "node_rank=2 must be in 0 .. nnodes-1 = 1" in text


def test_a_precision_mode_brings_its_own_deepspeed_section():
    """The door for precision modes (FP8, COAT): ds_config asks the registered precision builder for its section."""
    from dataclasses import dataclass

    from tuneforge import registry
    from tuneforge.precision.modes import Precision, PrecisionSpec

    @dataclass
    class ScaledSpec(PrecisionSpec):
        name: str = "test_scaled"

    @registry.register("precision", "test_scaled", config=ScaledSpec)
    class Scaled(Precision):
        def ds_section(self):
            return {"bf16": {"enabled": True}, "communication_data_type": "fp32"}

    try:
        specs = build_specs(compose([]))
        specs["precision"] = ScaledSpec()
        c = ds_config(specs, 1)
    finally:
        registry._REGISTRY["precision"].pop("test_scaled")
    assert c["bf16"] == {"enabled": True} and c["communication_data_type"] == "fp32"
