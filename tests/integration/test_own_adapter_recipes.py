"""The tiny twins of the switchlora / triadaptlora / dsee recipes train and export through the real CLI."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ok, run_dir_of, summary, tuneforge
from tuneforge.runner import checkpoint


@pytest.mark.parametrize("recipe", ["switchlora_tiny", "triadaptlora_tiny", "dsee_tiny"])
def test_tiny_recipe_trains_and_exports(tmp_path, recipe):
    from transformers import AutoModelForCausalLM

    proc = ok(tuneforge("train", f"recipe={recipe}", "trainer.eval_at_start=false", cwd=tmp_path))
    run = run_dir_of(proc)
    assert summary(run)["status"] == "completed"
    ok(tuneforge("export", f"run_dir={run}", cwd=tmp_path))
    model = AutoModelForCausalLM.from_pretrained(run / "export")
    linears = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    if recipe == "dsee_tiny":  # the export is pruned to exactly 50% per adapted matrix
        assert all((w == 0).sum().item() == w.numel() // 2 for w in linears)
    if recipe == "triadaptlora_tiny":
        assert "triadaptlora: step" in proc.stdout
        meta = checkpoint.read_meta(checkpoint.complete(run)[-1])  # ranks saved in the method state
        assert max(meta["method"]["ranks"].values()) > 2
