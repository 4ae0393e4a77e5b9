"""Datasets of tuneforge's shipped lm-eval tasks, read from files inside the package (no download).

lm-eval imports this file by path (`custom_dataset: !function rows.qa` in a task YAML beside it) and calls the
function with the task's metadata and dataset_kwargs as keyword arguments."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FEWSHOT_ROWS = 4  # the first rows are the few-shot pool (num_fewshot <= 4); the rest (20) are scored


def qa(**_):
    """GSM8K-style rows of examples/qa.jsonl ({"question", "answer": "... #### N"}): a train split of the first
    FEWSHOT_ROWS rows for few-shot examples, a test split of the rest."""
    import datasets

    lines = (EXAMPLES / "qa.jsonl").read_text().splitlines()
    rows = datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    return datasets.DatasetDict({"train": rows.select(range(FEWSHOT_ROWS)),
                                 "test": rows.select(range(FEWSHOT_ROWS, len(rows)))})
