"""The product's first impression: `tuneforge train` with no arguments fine-tunes SmolLM2-135M-Instruct on
generated word problems and improves exact match on held-out problems (~4 minutes on 2 CPU cores)."""

from __future__ import annotations

import pytest

from tests.conftest import ok, run_dir_of, summary, tuneforge


@pytest.mark.slow
def test_quickstart_no_arguments_improves_exact_match(tmp_path):
    proc = ok(tuneforge("train", cwd=tmp_path))
    s = summary(run_dir_of(proc))
    before, after = s["eval_before"]["exact_match"], s["eval"]["exact_match"]
    print(f"quickstart exact match: {before:.1%} -> {after:.1%} in {s['wall_time_s']:.0f}s")
    assert after > before + 0.2, (before, after)
    assert "exact match" in proc.stdout and "run dir:" in proc.stdout
