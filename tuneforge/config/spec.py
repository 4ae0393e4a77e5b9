"""Base for every config dataclass ("spec"). Specs are data: they import no torch.

`knob(default, help)` declares a field with its user-facing help (printed by `tuneforge show --doc`).
`problems()` returns every range problem of the spec at once; `__post_init__` raises them together.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field


def knob(default, help: str):  # noqa: A002 - "help" reads best in the specs
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class SpecError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class Spec:
    """Mixin for spec dataclasses: `problems()` lists range errors; construction fails with all of them."""

    def problems(self) -> list[str]:
        return []

    def __post_init__(self):
        probs = self.problems()
        if probs:
            raise SpecError(probs)


def one_of(spec, name: str, allowed) -> list[str]:
    value = getattr(spec, name)
    if value not in allowed:
        return [f"{name}={value!r} is not one of {', '.join(map(str, allowed))}"]
    return []


def positive(spec, *names: str, allow_zero: bool = False) -> list[str]:
    out = []
    for n in names:
        v = getattr(spec, n)
        if v < 0 or (v == 0 and not allow_zero):
            out.append(f"{n}={v} must be {'>= 0' if allow_zero else '> 0'}")
    return out


def has_targets(spec) -> list[str]:
    """Adapter methods: at least one target module."""
    return [] if spec.target_modules else ["target_modules is empty: list module names or use ['all-linear']"]


def help_of(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
