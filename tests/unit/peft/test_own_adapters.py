"""Cross-axis checks and schedules of tuneforge's own adapters (switchlora, triadaptlora, dsee)."""

from __future__ import annotations

import pytest

from tuneforge.config.compose import compose
from tuneforge.errors import InputError
from tuneforge.peft.switchlora.apply import switch_rate
from tuneforge.peft.triadaptlora.apply import n_growing


@pytest.mark.parametrize("overrides,fix", [
    (["peft=dsee", "zero=zero3"], "use zero=zero2"),
    (["peft=switchlora", "optim=adamw8bit"], "use optim=adamw"),
    (["peft=triadaptlora", "zero=zero3_nvme", "zero.nvme_path=/tmp"], "use zero=zero2"),
    (["peft=triadaptlora", "peft.r_max=4"], "need r_init <= reference_rank <= r_max"),
])
def test_impossible_combinations_name_the_fix(overrides, fix):
    with pytest.raises(InputError, match=fix):
        compose(overrides)


def test_schedules():
    assert switch_rate(99, 100) == pytest.approx(0.3)  # 0.3x the initial frequency at descent_steps
    assert switch_rate(0, 100) > switch_rate(50, 100) > switch_rate(99, 100)
    assert [n_growing(100, p, "linear") for p in (0.0, 0.25, 1.0)] == [1, 25, 100]  # at least one module grows
    assert [n_growing(100, p, "exponential") for p in (0.0, 0.5, 1.0)] == [1, 10, 100]
