"""selection=mates in a run: the tiny recipe (its golden run) re-selects during training, records each choice,
and a run resumed from a checkpoint re-selects the same samples and trains with the same losses. (Apart from
test_mates.py, whose module-scoped engines hold the process group that a run opens and closes.)"""

from __future__ import annotations

import json


def test_mates_tiny_reselects_records_and_resumes_exactly(tmp_path):
    """The tiny recipe (its golden run): MATES re-selects at steps 0 and 3 (each choice in run_dir/selection/ and in
    the step-3 checkpoint); a copy of the run cut back to that checkpoint resumes, re-selects at step 3 again, and
    trains on exactly the same samples with the same losses."""
    from tests.conftest import train_here, train_losses
    from tests.golden import runs as golden
    from tests.reliability.helpers import cut_back
    from tuneforge.runner.checkpoint import read_meta

    run = train_here(*golden.ARGS["mates_tiny"], out=tmp_path / "run")
    golden.check("mates_tiny", train_losses(run))
    picks = {s: json.loads((run / f"selection/step_{s}.json").read_text()) for s in (0, 3)}
    assert picks[0]["chosen"] != picks[3]["chosen"] and picks[0]["oracle"] != picks[3]["oracle"]
    assert not set(picks[3]["chosen"]) & set(picks[3]["reference"]) and len(picks[3]["chosen"]) == 44
    assert read_meta(run / "checkpoints/step_3")["data"] == {"chosen": picks[0]["chosen"], "reselected_at": 0}
    resumed = cut_back(run, tmp_path / "resumed", 3)
    (resumed / "selection/step_3.json").unlink()
    train_here(*golden.ARGS["mates_tiny"], "trainer.resume=auto", out=resumed)
    assert train_losses(resumed) == train_losses(run)
    assert json.loads((resumed / "selection/step_3.json").read_text()) == picks[3]
