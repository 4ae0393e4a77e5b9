from __future__ import annotations

import random
import re

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.data.quickstart import problem


def load(*overrides):
    return registry.build("data", build_specs(compose(["data=quickstart", *overrides]))["data"]).load(0)


def operands(ex):
    a, b = map(int, re.findall(r"\d+", ex.messages[0]["content"]))
    return a, b


def test_deterministic_by_seed_and_eval_disjoint():
    a, b, c = load(), load(), load("data.seed=1")
    assert [e.messages for e in a.train] == [e.messages for e in b.train]
    assert [e.messages for e in a.train] != [e.messages for e in c.train]
    held = {operands(e) for e in a.eval}
    assert len(a.eval) == 100 and len(a.train) == 2000
    assert not held & {operands(e) for e in a.train}


def test_answers_are_right():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        (op, a, b), ex = problem(rng, 2, ["+", "-"])
        seen.add(op)
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert int(ex.answer) == (a + b if op == "+" else a - b) and ex.answer == ex.messages[-1]["content"]
        assert operands(ex) == (a, b)
    assert seen == {"+", "-"}
