"""The tokenization cache: encoded samples stored under $TUNEFORGE_CACHE/tokenized/ (default ~/.cache/tuneforge),
keyed by a fingerprint of what they depend on, so a second run on the same data does not tokenize again.

The key hashes (1) the examples themselves -- every row's mapped messages or text, task and location, so any change
of the data file, of its rows or of the field mapping misses -- (2) the tokenizer by content, not by name: its class, its
serialized vocabulary/merges/normalizer/post-processor (`tokenizer.json`), chat template and special tokens (the
same tokenizer loaded from a hub id or a local copy shares entries; a changed template misses), and
(3) the data config (every data.* key but `cache` and `streaming`, which change which rows are read, not how, and
`bucket`, which changes only how samples are batched). Hashing rows costs a small fraction of tokenizing them.
An entry is one .npz file (token ids and labels flat, with offsets) written atomically, so ranks that encode the
same data at once never read half a file. The over-length and no-trained-token reports are stored with the
samples and replayed on a hit, so the problem report is the same either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tuneforge.data.encode import Sample, encode
from tuneforge.data.rows import Example, RowReport
from tuneforge.data.spec import DataSpec
from tuneforge.resources import cache_dir

VERSION = 1  # bump when encode() changes what it produces


@dataclass
class Encoded:
    samples: list[Sample]
    path: Path | None  # the cache entry (None: data.cache=false)
    reused: bool


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    for part in (type(tok).__name__, vocab, tok.chat_template or "",
                 json.dumps(tok.special_tokens_map, sort_keys=True, default=str)):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(examples: list[Example], tok, spec: DataSpec) -> str:
    config = {k: v for k, v in asdict(spec).items() if k not in ("cache", "streaming", "bucket")}
    h = hashlib.sha256(json.dumps([VERSION, config, tokenizer_fingerprint(tok)], sort_keys=True, default=str).encode())
    for ex in examples:
        h.update(json.dumps([ex.messages, ex.text, ex.task, ex.source], ensure_ascii=False).encode())
    return h.hexdigest()[:32]


def encode_cached(examples: list[Example], tok, spec: DataSpec, report: RowReport, advance=None) -> Encoded:
    """`encode(examples, ...)`, or the samples a previous encode of the same inputs stored."""
    if not spec.cache or not examples:
        return Encoded(encode(examples, tok, spec, report, advance), None, False)
    path = cache_dir() / "tokenized" / f"{fingerprint(examples, tok, spec)}.npz"
    if path.is_file():
        try:
            samples, problems = load(path)
        except (OSError, ValueError, KeyError):  # unreadable (e.g. a truncated copy): tokenize again
            pass
        else:
            for reason, where in problems:
                report.add(reason, where)
            return Encoded(samples, path, True)
    fresh = RowReport()
    samples = encode(examples, tok, spec, fresh, advance)
    problems = [(reason, where) for reason, locs in fresh.where.items() for where in locs]
    for reason, where in problems:
        report.add(reason, where)
    save(path, samples, problems)
    return Encoded(samples, path, False)


def save(path: Path, samples: list[Sample], problems: list[tuple[str, str]]) -> None:
    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    flat = lambda key: np.array([t for s in samples for t in getattr(s, key)], dtype=np.int64)  # noqa: E731
    meta = {"sources": [s.source for s in samples], "tasks": [s.task for s in samples], "problems": problems}
    buf = io.BytesIO()
    np.savez(buf, lengths=lengths, input_ids=flat("input_ids"), labels=flat("labels"),
             meta=np.array(json.dumps(meta)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def load(path: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    with np.load(path) as z:
        ends = np.cumsum(z["lengths"]).tolist()
        ids, labels, meta = z["input_ids"].tolist(), z["labels"].tolist(), json.loads(str(z["meta"]))
    starts = [0, *ends[:-1]]
    samples = [Sample(ids[a:b], labels[a:b], src, task=task)
               for a, b, src, task in zip(starts, ends, meta["sources"], meta["tasks"])]
    return samples, [tuple(p) for p in meta["problems"]]
