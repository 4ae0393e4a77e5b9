"""File formats: one registered class per `data=` option. Each turns a row into an Example or raises BadRow.

The shared `load()` reads data.path (any source data/source.py opens: a file, glob, directory or hub id) and
data.eval_path, or holds out `eval_split`, counting bad rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tuneforge.data.rows import BadRow, Example, RowReport, field_text
from tuneforge.data.source import open_rows
from tuneforge.data.spec import AlpacaSpec, ChatSpec, DataSpec, JsonlSpec, QASpec, TextSpec
from tuneforge.errors import InputError
from tuneforge.registry import register


@dataclass
class Loaded:
    train: Iterable[Example]  # a list; a lazy iterator when data.streaming=true
    eval: list[Example]
    report: RowReport


class Format:
    def __init__(self, spec: DataSpec):
        self.spec = spec

    def to_example(self, row) -> Example:
        raise NotImplementedError

    def examples(self, ref: str, split: str, report: RowReport, limit: int = 0) -> Iterator[Example]:
        """The examples of `ref` (data/source.py: a file, glob, directory or hub id), bad rows counted in
        `report`. The source is opened now (a missing file fails here); its rows are read as they are taken."""
        s = self.spec
        try:
            rows = open_rows(ref, report, split, s.subset, s.streaming, limit)
        except FileNotFoundError as e:
            raise InputError([f"data file not found: {e.args[0]} (set data.path / data.eval_path)"]) from None
        return self._examples(rows, report)

    def _examples(self, rows, report: RowReport) -> Iterator[Example]:
        for loc, row in rows:
            try:
                ex = self.to_example(row)
                if self.spec.task_field:
                    ex.task = field_text(row, self.spec.task_field)
                    if ex.task not in self.spec.tasks:
                        raise BadRow(f"task '{ex.task}' is not in data.tasks")
            except BadRow as e:
                report.add(str(e), loc)
                continue
            ex.source = loc
            report.valid += 1
            yield ex

    def read(self, ref: str, report: RowReport, limit: int = 0, split: str = "train") -> list[Example]:
        return list(self.examples(ref, split, report, limit))

    def load(self, seed: int) -> Loaded:
        """Read, report bad rows (policy `bad_rows`), split train/eval. Raises InputError if nothing is usable.
        With data.streaming=true, `train` is a lazy iterator of examples (the runner takes what it trains on)."""
        s, report = self.spec, RowReport()
        if s.streaming:
            stream = self.examples(s.path, s.split, report, s.limit)
            evals = self.read(s.eval_path, report, split=s.eval_path_split or s.split) if s.eval_path else []
            return Loaded(stream, evals, report)
        train = self.read(s.path, report, s.limit, s.split)
        if s.eval_path:
            evals = self.read(s.eval_path, report, split=s.eval_path_split or s.split)
        else:
            k = int(s.eval_split) if s.eval_split >= 1 else int(round(len(train) * s.eval_split))
            k = min(k, max(len(train) - 1, 0))
            order = list(range(len(train)))
            random.Random(seed).shuffle(order)
            held = set(order[:k])
            evals = [ex for i, ex in enumerate(train) if i in held]
            train = [ex for i, ex in enumerate(train) if i not in held]
        check_report(s, report, len(train))
        return Loaded(train, evals, report)


def check_report(spec: DataSpec, report: RowReport, n_train: int) -> None:
    problems = []
    if report.bad and spec.bad_rows == "error":
        problems += [f"malformed rows (data.bad_rows=error; set data.bad_rows=skip to skip them): {ln}"
                     for ln in report.lines()]
    if n_train == 0:
        problems.append(f"data={spec.name}: no valid training rows in {spec.path}"
                        + ("; bad rows: " + "; ".join(report.lines()) if report.bad else ""))
    if problems:
        raise InputError(problems, title="bad dataset")


@register("data", "jsonl", config=JsonlSpec)
class Jsonl(Format):
    def to_example(self, row):
        s = self.spec
        msgs = []
        system = field_text(row, s.system_field, required=False) if s.system_field else None
        if system:
            msgs.append({"role": "system", "content": system})
        msgs += [{"role": "user", "content": field_text(row, s.prompt_field)},
                 {"role": "assistant", "content": field_text(row, s.response_field)}]
        answer = field_text(row, s.answer_field, required=False) if s.answer_field else None
        return Example(messages=msgs, answer=answer or msgs[-1]["content"])


@register("data", "alpaca", config=AlpacaSpec)
class Alpaca(Format):
    def to_example(self, row):
        s = self.spec
        prompt = field_text(row, s.instruction_field)
        extra = field_text(row, s.input_field, required=False)
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        out = field_text(row, s.output_field)
        return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": out}],
                       answer=out)


ROLES = ("system", "user", "assistant")


@register("data", "chat", config=ChatSpec)
@register("data", "sharegpt", config=ChatSpec)
class Chat(Format):
    def to_example(self, row):
        s = self.spec
        if not isinstance(row, dict) or s.messages_field not in row:
            raise BadRow(f"missing field '{s.messages_field}'")
        turns = row[s.messages_field]
        if not isinstance(turns, list) or not turns:
            raise BadRow(f"empty field '{s.messages_field}'")
        msgs = []
        for t in turns:
            role = field_text(t, s.role_field)
            role = s.role_map.get(role, role)
            if role not in ROLES:
                raise BadRow(f"unknown role '{role}' (map it with data.role_map)")
            msgs.append({"role": role, "content": field_text(t, s.content_field)})
        if msgs[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in msgs):
            raise BadRow("conversation does not end with an assistant turn")
        return Example(messages=msgs, answer=msgs[-1]["content"])


@register("data", "qa", config=QASpec)
class QA(Format):
    def to_example(self, row):
        s = self.spec
        q, a = field_text(row, s.question_field), field_text(row, s.answer_field)
        final = a
        if s.answer_pattern:
            m = re.search(s.answer_pattern, a, flags=re.MULTILINE)
            if m is None:
                raise BadRow("answer does not match data.answer_pattern")
            final = m.group(1)
        return Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], answer=final)


@register("data", "text", config=TextSpec)
class Text(Format):
    def to_example(self, row):
        text = row if isinstance(row, str) else field_text(row, self.spec.text_field)
        if not text.strip():
            raise BadRow("empty text")
        return Example(text=text)
