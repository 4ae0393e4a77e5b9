"""A selector that scores with the model and re-selects during training (selection=loss, reselect_every=2):
each choice is written to run_dir/selection/, kept in checkpoints, and a run resumed between re-selections
trains on exactly the samples of the uninterrupted run (bitwise-equal losses)."""

from __future__ import annotations

import json

from tests.conftest import ok
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
