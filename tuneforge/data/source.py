"""Where rows come from: `data.path` as a file, a glob, a directory or a hub dataset id, read through `datasets`.

    kind                          read by                                               a row's location
    .jsonl / .json / .txt file    tuneforge's line reader (rows.py)                     file:line, file[i], file:docN
    .parquet / .arrow / .csv      datasets `load_dataset(<builder>, data_files=file)`   file[i]
    glob                          each matching file as above, in sorted order           per file, as above
    save_to_disk directory        datasets `load_from_disk` (data.split of a DatasetDict)  dir:split[i]
    directory of data files       datasets `load_dataset(dir, name=data.subset)`        dir:split[i]
    hub dataset id (org/name)     datasets `load_dataset(id, name=data.subset)`         id:split[i]

Line-based files keep tuneforge's own reader: datasets' JSON builder stops at the first malformed line and casts
every row to one schema, while the problem report must name each bad line and read on. Local files are always
read as a stream (nothing is converted into the datasets cache first); a hub dataset is downloaded into the
Hugging Face cache unless data.streaming=true. Opening a source is eager (a missing file or an unreachable hub
fails here, before any model loads); reading its rows is lazy.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from tuneforge.data.rows import RowReport, read_lines
from tuneforge.errors import InputError
from tuneforge.resources import PKG, cache_dir, resolve_ref

LINE_SUFFIXES = (".jsonl", ".json", ".txt")
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
SUFFIXES = LINE_SUFFIXES + tuple(BUILDERS)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
LOCAL_HINT = ("point data.path at local files: a file (data.path=/path/to/train.parquet, or .jsonl .json .csv "
              ".arrow .txt), a glob (data.path='/data/train-*.parquet'), a directory of data files, or a "
              "save_to_disk directory (data.path=/path/to/saved)")

Rows = Iterator[tuple[str, object]]


def is_glob(ref: str) -> bool:
    return any(c in ref for c in "*?[")


def names_files(ref: str) -> bool:
    """A path that names files (one or a glob of them), which have one split only."""
    return is_glob(ref) or ref.lower().endswith(SUFFIXES)


def looks_like_hub_id(ref: str) -> bool:
    return (not ref.startswith((PKG, "/", ".", "~")) and not ref.lower().endswith(SUFFIXES)
            and _HUB_ID.fullmatch(ref) is not None)


def open_rows(ref: str, report: RowReport, split: str = "train", subset: str | None = None,
              streaming: bool = False, limit: int = 0) -> Rows:
    """(location, row) of the rows of `ref` (the first `limit` when > 0). Raises InputError, or FileNotFoundError
    for a missing file."""
    path = resolve_ref(ref)
    if is_glob(ref) and not path.exists():
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"{path} (no file matches the glob)")
        opened = [open_file(f, report, limit) for f in files]  # all opened (checked) before any row is read
        rows = (r for it in opened for r in it)
        return itertools.islice(rows, limit) if limit else rows
    if path.is_file():
        return open_file(path, report, limit)
    if path.is_dir():
        return open_dir(path, split, subset, limit)
    if looks_like_hub_id(ref):
        return open_hub(ref, split, subset, streaming, limit)
    raise FileNotFoundError(str(path))


def open_file(path: Path, report: RowReport, limit: int = 0) -> Rows:
    suffix = path.suffix.lower()
    if suffix in LINE_SUFFIXES:
        return read_lines(path, report, limit)
    if suffix not in BUILDERS:
        raise InputError([f"data file {path}: unknown type '{suffix}' (use {', '.join(SUFFIXES)})"])
    return indexed(path.name, _hf("load_dataset", path, BUILDERS[suffix], data_files=str(path), split="train",
                                  streaming=True, cache_dir=str(cache_dir() / "datasets")), limit)


def open_dir(path: Path, split: str, subset: str | None, limit: int) -> Rows:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # a save_to_disk directory
        ds = _hf("load_from_disk", path, str(path))
        if hasattr(ds, "keys"):  # a DatasetDict: pick the split
            if split not in ds:
                raise InputError([f"data.split={split!r} is not in {path} (its splits: {', '.join(ds)}): "
                                  f"set data.split to one of them"])
            ds = ds[split]
        return indexed(f"{path.name}:{split}", ds, limit)
    ds = _hf("load_dataset", path, str(path), name=subset, split=split, streaming=True,
             cache_dir=str(cache_dir() / "datasets"))
    return indexed(f"{path.name}:{split}", ds, limit)


def open_hub(ref: str, split: str, subset: str | None, streaming: bool, limit: int) -> Rows:
    import datasets

    if not datasets.config.HF_HUB_OFFLINE and (why := hub_unreachable()):
        raise InputError([f"data.path={ref} is not a local file or directory, and the Hugging Face hub is not "
                          f"reachable to load it as a dataset id ({why}): {LOCAL_HINT}; a dataset already in the "
                          "local Hugging Face cache loads with HF_DATASETS_OFFLINE=1"])
    try:
        ds = datasets.load_dataset(ref, name=subset, split=split, streaming=streaming)
    except ConnectionError as e:  # offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) and not in the local cache
        raise InputError([f"data.path={ref} is not a local file or directory, and hub dataset '{ref}' cannot be "
                          f"loaded without hub access ({e}): {LOCAL_HINT}"]) from None
    except (ValueError, FileNotFoundError) as e:  # unknown split or subset, no such dataset
        raise InputError([f"data.path={ref}: {e} (data.split={split}, data.subset={subset})"]) from None
    return indexed(f"{ref}:{split}", ds, limit)


def hub_unreachable() -> str:
    """Why the hub's host cannot be reached, or '' when it can (one quick connection: datasets itself retries
    for ~20 s before it gives up)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"
    return ""


def _hf(fn: str, where: Path, *args, **kwargs):
    """Call datasets.<fn>; its errors on a local source become an InputError naming the source."""
    import datasets

    try:
        return getattr(datasets, fn)(*args, **kwargs)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise InputError([f"cannot read {where} with datasets.{fn}: {e}"]) from None


def indexed(label: str, ds, limit: int = 0) -> Rows:
    """(label[i], row) of a datasets Dataset or IterableDataset; a read error names the source."""
    try:
        for i, row in enumerate(ds):
            if limit and i >= limit:
                return
            yield f"{label}[{i}]", row
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas parse errors come in many types
        raise InputError([f"cannot read {label}: {type(e).__name__}: {e}"]) from None
