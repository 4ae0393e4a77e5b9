"""Every tiny twin recipe trains through the real CLI (recipes that other tests run in depth are listed in
RUN_ELSEWHERE). A tiny twin is its 7B recipe on a random 2-layer Llama: this walk proves that each recipe's own
combination of options (data format, method knobs, ranks, ZeRO stage) runs end to end. Every method's export is
checked by its row in tests/contracts/test_peft_family.py; here only the recipes whose export has a property of
its own (DSEE's pruning, LST's side-network format) are exported."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ok, run_dir_of, summary, tuneforge
from tuneforge import registry
from tuneforge.config.compose import build_specs, compose, recipes
from tuneforge.runner import checkpoint

RUN_ELSEWHERE = {
    "quickstart_tiny": "tests/integration/*",
    "lisa_tiny": "tests/contracts/test_lisa.py",
    "qlora_tiny": "tests/contracts/test_lora_variants.py",
}
TINY = sorted(r for r in recipes() if r.endswith("_tiny") or r == "full_tiny_zero3")


def test_every_method_has_a_tiny_twin():
    """One tiny twin per non-tiny recipe family: the walk covers every method's recipe."""
    methods = {build_specs(compose([f"recipe={r}"]))["peft"].name for r in TINY}
    assert set(registry.names("peft")) - methods <= {"freeze"}, set(registry.names("peft")) - methods


@pytest.mark.parametrize("recipe", [r for r in TINY if r not in RUN_ELSEWHERE])
def test_tiny_recipe_trains(tmp_path, recipe):
    from transformers import AutoModelForCausalLM

    steps = [] if recipe == "triadaptlora_tiny" else ["trainer.max_steps=2"]  # its ranks grow over its 4 steps
    proc = ok(tuneforge("train", f"recipe={recipe}", "trainer.eval_at_start=false", *steps, cwd=tmp_path))
    run = run_dir_of(proc)
    s = summary(run)
    assert s["status"] == "completed" and s["final_train_loss"] == s["final_train_loss"]
    if recipe == "triadaptlora_tiny":
        assert "triadaptlora: step" in proc.stdout
        meta = checkpoint.read_meta(checkpoint.complete(run)[-1])  # ranks saved in the method state
        assert max(meta["method"]["ranks"].values()) > 2
    if recipe not in ("dsee_tiny", "lst_tiny"):
        return
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    exports = [p.parent for p in (run / "export").rglob("config.json") if p.parent.name != "adapter"]
    if recipe == "lst_tiny":  # LST cannot merge: it exports its side network
        assert (run / "export" / "lst" / "side.safetensors").is_file() and not exports
        return
    model = AutoModelForCausalLM.from_pretrained(exports[0])  # DSEE: pruned to exactly 50% per adapted matrix
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert linears and all((w == 0).sum().item() == w.numel() // 2 for w in linears)
