"""Metrics sinks, rank 0: <run_dir>/metrics.jsonl (one JSON object per logged step or eval), TensorBoard and an
experiment tracker (W&B, MLflow: logging/trackers/) optional; at the end <run_dir>/plots/loss.png (logging/plots.py)
and the run's summary.json to the tracker."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class Metrics:
    def __init__(self, run_dir: Path, enabled: bool, logger=None, config=None, recipe: str = "", warn=print):
        """`logger`: the logger spec (tensorboard, tracker, plots); `config`: the resolved (masked) config the
        tracker records; `warn`: where a failure of the tracker or the plot at the end is reported."""
        self.enabled, self.warn = enabled, warn
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.plots = enabled and logger is not None and logger.plots
        self.tb = self.tracker = None
        if enabled and logger is not None and logger.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if enabled and logger is not None and logger.tracker != "none":
            from tuneforge.logging.trackers import open_tracker

            self.tracker = open_tracker(logger, self.run_dir, config or {}, recipe)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
        if self.tracker is not None:
            self.tracker.log(row)

    def truncate(self, step: int) -> None:
        """Drop rows after `step` (a resumed run logs those steps again)."""
        if self.enabled and self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            self.path.write_text("".join(ln + "\n" for ln in keep))

    def close(self) -> None:
        """End of the run (any status): the tracker gets summary.json (written just before) and finishes; the loss
        plot is drawn from metrics.jsonl. A failure of either is reported through `self.warn`, never fails the run."""
        if self.tb is not None:
            self.tb.close()
        tracker, self.tracker = self.tracker, None
        plots, self.plots = self.plots, False
        if tracker is not None:
            self._safely("tracker", lambda: self._finish(tracker))
        if plots:
            self._safely("plot", self._plot)

    def _safely(self, what: str, todo) -> None:
        try:
            todo()
        except Exception as e:  # noqa: BLE001 - the run's own result stands; say what is missing
            self.warn(f"warning: the {what} at the end of the run failed: {type(e).__name__}: {e}")

    def _finish(self, tracker) -> None:
        summary_file = self.run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        tracker.finish(summary, summary.get("status", "failed"))

    def _plot(self) -> None:
        from tuneforge.logging.plots import loss_png

        loss_png(self.run_dir)
