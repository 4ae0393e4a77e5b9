"""The quickstart task: arithmetic word problems generated in code, identical for a given seed.

Eval problems are drawn first and their (operation, a, b) triples are excluded from training, so the
before/after exact-match numbers measure generalisation, not recall.
"""

from __future__ import annotations

import random

from tuneforge.data.formats import Format, Loaded
from tuneforge.data.rows import Example, RowReport
from tuneforge.data.spec import TASK_OPS, QuickstartSpec
from tuneforge.registry import register

NAMES = ("Tom", "Ana", "Ravi", "Mei", "Sara", "Leo", "Omar", "Ines")
THINGS = ("apples", "books", "coins", "stickers", "pencils", "shells", "cards", "marbles")
TEMPLATES = {
    "+": (
        "{n} has {a} {o} and gets {b} more. How many {o} does {n} have now?",
        "A shop sold {a} {o} in the morning and {b} {o} in the afternoon. How many {o} did it sell in total?",
        "There are {a} {o} in one box and {b} {o} in another. How many {o} are there altogether?",
        "{n} collected {a} {o} on Monday and {b} {o} on Tuesday. How many {o} did {n} collect in all?",
    ),
    "-": (
        "{n} had {a} {o} and gave away {b}. How many {o} does {n} have left?",
        "A box holds {a} {o}. {b} of them are taken out. How many {o} remain in the box?",
        "{n} needs {a} {o} and already has {b}. How many more {o} does {n} need?",
    ),
}


def problem(rng: random.Random, digits: int, ops: list[str]) -> tuple[tuple, Example]:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    op = rng.choice(ops)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    q = rng.choice(TEMPLATES[op]).format(n=rng.choice(NAMES), o=rng.choice(THINGS), a=a, b=b)
    answer = str(a + b if op == "+" else a - b)
    ex = Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": answer}], answer=answer)
    return (op, a, b), ex


def label(spec: QuickstartSpec, op: str):
    """With data.tasks (add, sub), each problem's task is its operation."""
    return next((t for t in spec.tasks if TASK_OPS[t] == op), None) if spec.tasks else None


@register("data", "quickstart", config=QuickstartSpec)
class Quickstart(Format):
    def load(self, seed: int) -> Loaded:
        s: QuickstartSpec = self.spec
        rng = random.Random(s.seed)
        held, evals = set(), []
        while len(evals) < s.n_eval:
            key, ex = problem(rng, s.digits, s.ops)
            if key not in held:
                held.add(key)
                ex.task = label(s, key[0])
                ex.source = f"quickstart:eval:{len(evals)}"
                evals.append(ex)
        train = []
        while len(train) < s.n_train:
            key, ex = problem(rng, s.digits, s.ops)
            if key not in held:
                ex.task = label(s, key[0])
                ex.source = f"quickstart:train:{len(train)}"
                train.append(ex)
        report = RowReport()
        report.valid = len(train) + len(evals)
        return Loaded(train, evals, report)
