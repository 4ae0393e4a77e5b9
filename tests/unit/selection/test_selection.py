from __future__ import annotations

from pathlib import Path

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.selection import SelectionContext


def select(n, seed, *overrides):
    spec = build_specs(compose(list(overrides)))["selection"]
    return registry.build("selection", spec).select(list(range(n)), SelectionContext(seed, None, Path(".")))


def test_none_keeps_all():
    assert select(7, 0, "selection=none") == list(range(7))


def test_random_fraction_and_count_are_seeded_subsets():
    a = select(100, 1, "selection=random", "selection.fraction=0.3")
    assert len(a) == 30 == len(set(a)) and a == sorted(a)
    assert a == select(100, 1, "selection=random", "selection.fraction=0.3")
    assert a != select(100, 2, "selection=random", "selection.fraction=0.3")
    assert len(select(100, 1, "selection=random", "selection.count=12")) == 12
