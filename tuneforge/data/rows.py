"""Examples, the report of malformed rows (counted per reason, with file:line or row index), and the line reader
for .jsonl/.json/.txt files (data/source.py picks the reader for each kind of data.path)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class Example:
    """One training/eval example before tokenization."""

    messages: Optional[list[dict]] = None  # chat turns {role, content}; assistant turns are trained
    text: Optional[str] = None  # plain text; every token is trained
    answer: Optional[str] = None  # reference answer for the checker
    task: Optional[str] = None  # multi-task data: the example's task name (data.task_field / data.tasks)
    source: str = ""  # where the row was read: file:line, file[i], dir:split[i]


class BadRow(Exception):
    """A row that cannot become an example; the message is the reason (counted in the report)."""


@dataclass
class RowReport:
    """Malformed rows by reason, each with where it was found."""

    where: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    valid: int = 0

    def add(self, reason: str, location: str) -> None:
        self.where[reason].append(location)

    @property
    def bad(self) -> int:
        return sum(len(v) for v in self.where.values())

    def lines(self, max_locations: int = 5) -> list[str]:
        out = []
        for reason, locs in sorted(self.where.items(), key=lambda kv: -len(kv[1])):
            more = f", ... (+{len(locs) - max_locations})" if len(locs) > max_locations else ""
            out.append(f"{reason} x{len(locs)}: {', '.join(locs[:max_locations])}{more}")
        return out


def read_lines(path: Path, report: RowReport, limit: int = 0) -> Iterator[tuple[str, dict | str]]:
    """Yield (location, row) from .jsonl, .json (list of objects) or .txt (blank-line separated documents)."""
    name, n = path.name, 0
    if path.suffix == ".txt":
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
        for i, doc in enumerate(docs):
            if limit and n >= limit:
                return
            n += 1
            yield f"{name}:doc{i + 1}", doc
        return
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            report.add("bad JSON", f"{name}:{e.lineno}")
            return
        if not isinstance(rows, list):
            report.add("not a JSON list of objects", f"{name}:1")
            return
        for i, row in enumerate(rows):
            if limit and n >= limit:
                return
            n += 1
            yield f"{name}[{i}]", row
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if limit and n >= limit:
                return
            if not line.strip():
                continue
            n += 1
            try:
                yield f"{name}:{lineno}", json.loads(line)
            except json.JSONDecodeError:
                report.add("bad JSON", f"{name}:{lineno}")


def field_text(row: dict, key: str, required: bool = True) -> Optional[str]:
    """A string field of a row: BadRow if missing, not text, or empty (when required)."""
    if not isinstance(row, dict):
        raise BadRow("row is not a JSON object")
    if key not in row or row[key] is None:
        if required:
            raise BadRow(f"missing field '{key}'")
        return None
    value = row[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(f"field '{key}' is not text")
    if required and not value.strip():
        raise BadRow(f"empty field '{key}'")
    return value
