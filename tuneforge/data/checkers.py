"""Answer checkers for generation-based exact match: does a model's completion state the reference answer?"""

from __future__ import annotations

import re

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The answer a completion commits to: what follows '####' if present, else its last number."""
    if "####" in text:
        text = text.split("####")[-1]
    nums = _NUM.findall(text)
    if not nums:
        return None
    try:
        return float(nums[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split()).rstrip(".")


def check(checker: str, completion: str, reference: str) -> bool:
    if checker == "number":
        pred, ref = final_number(completion), final_number(reference)
        return pred is not None and ref is not None and abs(pred - ref) < 1e-6
    if checker == "exact":
        return _norm(completion) == _norm(reference)
    raise ValueError(f"unknown checker {checker!r}")
