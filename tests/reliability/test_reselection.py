"""A selector that scores with the model and re-selects during training (selection=loss, reselect_every=2):
each choice is written to run_dir/selection/, kept in checkpoints, and a run resumed between re-selections
trains on exactly the samples of the uninterrupted run (bitwise-equal losses)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ok, tuneforge
from tests.reliability.helpers import cut_back, rows, train
from tuneforge.runner.checkpoint import read_meta

SELECT = ["selection=loss", "selection.fraction=0.5", "selection.reselect_every=2", "trainer.max_steps=6",
          "trainer.save_every=2", "trainer.keep_last=3"]


def test_reselection_is_saved_and_resumes_exactly(tmp_path):
    proc = ok(train(tmp_path, "full", *SELECT))
    run = tmp_path / "full"
    assert "re-selected 12 of 24 samples" in proc.stdout
    picks = {s: json.loads((run / f"selection/step_{s}.json").read_text()) for s in (0, 2, 4)}
    assert all(len(p["chosen"]) == 12 and len(p["scores"]) == 24 for p in picks.values())
    for s, p in picks.items():  # the chosen are the 12 highest-loss samples of that step's scores
        top = sorted(range(24), key=lambda i: (-p["scores"][i], i))[:12]
        assert p["chosen"] == sorted(top), s
    assert picks[0]["scores"] != picks[2]["scores"]  # re-scored with the trained model
    # checkpoint step_N is taken after N steps, before step N+1's re-selection: it holds the choice steps 3-4 used
    assert read_meta(run / "checkpoints/step_4")["data"] == {"chosen": picks[2]["chosen"], "reselected_at": 2}

    cut_back(run, tmp_path / "resumed", 2)
    ok(train(tmp_path, "resumed", *SELECT, "trainer.resume=auto"))
    assert [r["loss"] for r in rows(tmp_path / "resumed")] == [r["loss"] for r in rows(run)]


@pytest.mark.parametrize(("recipe", "cut"), [("skillit_tiny", 3), ("middo_tiny", 4)])
def test_dynamic_selectors_resume_mid_round_exactly(recipe, cut, tmp_path):
    """Skill-it (mixture updated every 2 steps) cut back to step 3, Middo (its loop at the epoch boundary, step 3)
    cut back to step 4: each resumed run re-reads its saved choice and trains on exactly the uninterrupted run's
    samples (bitwise-equal losses)."""
    args = [f"recipe={recipe}", "trainer.save_every=1", "trainer.keep_last=6", "trainer.eval_at_start=false",
            "trainer.max_new_tokens=2", "data.n_eval=2"]
    ok(tuneforge("train", *args, f"trainer.output_dir={tmp_path / 'full'}", cwd=tmp_path))
    cut_back(tmp_path / "full", tmp_path / "resumed", cut)
    ok(tuneforge("train", *args, f"trainer.output_dir={tmp_path / 'resumed'}", "trainer.resume=auto", cwd=tmp_path))
    assert [r["loss"] for r in rows(tmp_path / "resumed")] == [r["loss"] for r in rows(tmp_path / "full")]
