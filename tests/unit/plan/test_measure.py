"""The CPU definition of a step's peak: live tensor bytes at the start plus the profiler's running peak."""

from __future__ import annotations

import torch

from tuneforge.plan.measure import StepPeak, live_tensor_bytes


def test_the_peak_counts_live_tensors_once_and_temporaries_at_their_high_point():
    kept = torch.zeros(1_000_000)  # 4 MB, live before and after
    view = kept[:10]  # same storage: not counted twice  # noqa: F841
    before = live_tensor_bytes()
    with StepPeak("cpu") as peak:
        a = torch.ones(2_000_000)  # 8 MB
        b = a * 2  # +8 MB: 16 MB of temporaries at the high point
        del a, b
        c = torch.ones(500_000)  # 2 MB after the high point
        del c
    assert before >= kept.nbytes
    assert 16_000_000 <= peak.bytes - peak.base < 16_001_000  # (+ a few bytes: the scalar 2 as a tensor)
    assert peak.base >= kept.nbytes
