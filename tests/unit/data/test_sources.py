"""data.path through Hugging Face `datasets`: parquet, CSV, arrow, save_to_disk and globs give the samples the same
rows give as JSON lines; hub ids fail clearly offline; the tokenization cache; streaming; the row problem report."""

from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge import registry
from tuneforge.config.compose import build_specs, compose
from tuneforge.data.cache import encode_cached
from tuneforge.data.encode import encode, pack
from tuneforge.data.rows import RowReport
from tuneforge.errors import InputError

ROWS = [{"prompt": f"What is {i} plus {i + 1}?", "response": f"It is {2 * i + 1}."} for i in range(6)]


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """tuneforge's cache (tokenized samples, datasets' locks) inside this test's tmp_path; the tiny model's
    tokenizer, converted once from a GGUF file into the real cache, is linked in rather than converted again."""
    from tuneforge.resources import cache_dir

    gguf = cache_dir() / "gguf"
    (tmp_path / "cache").mkdir()
    if gguf.is_dir():
        (tmp_path / "cache" / "gguf").symlink_to(gguf)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))


def spec(path, *overrides):
    return build_specs(compose(["data=jsonl", f"data.path={path}", "data.eval_split=0", *overrides]))["data"]


def encoded(path, tok, *overrides):
    s = spec(path, *overrides)
    loaded = registry.build("data", s).load(0)
    report = loaded.report
    return [(x.input_ids, x.labels) for x in encode(loaded.train, tok, s, report)], report


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write(kind: str, d, rows=ROWS):
    """The rows as `kind`, written with pyarrow / datasets / csv directly; returns the data.path to use."""
    table = pa.Table.from_pylist(rows)
    if kind == "parquet":
        pq.write_table(table, d / "train.parquet")
        return d / "train.parquet"
    if kind == "arrow":
        with pa.OSFile(str(d / "train.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
            w.write_table(table)
        return d / "train.arrow"
    if kind == "csv":
        with open(d / "train.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return d / "train.csv"
    if kind == "save_to_disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(d / "saved"))
        return d / "saved"
    if kind == "glob":
        write_jsonl(d / "shard-0.jsonl", rows[:4])
        write_jsonl(d / "shard-1.jsonl", rows[4:])
        return f"{d}/shard-*.jsonl"
    if kind == "directory":
        (d / "data").mkdir()
        pq.write_table(table, d / "data" / "train-00000-of-00001.parquet")
        return d / "data"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["parquet", "arrow", "csv", "save_to_disk", "glob", "directory"])
def test_every_path_kind_gives_the_samples_of_the_same_rows_in_jsonl(kind, tmp_path, tokenizer):
    want, _ = encoded(write_jsonl(tmp_path / "rows.jsonl", ROWS), tokenizer)
    got, report = encoded(write(kind, tmp_path), tokenizer)
    assert got == want and report.bad == 0 and report.valid == len(ROWS)


def test_split_of_a_save_to_disk_dataset_dict(tmp_path, tokenizer):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(str(tmp_path / "dd"))
    want, _ = encoded(write_jsonl(tmp_path / "test.jsonl", ROWS[2:]), tokenizer)
    assert encoded(tmp_path / "dd", tokenizer, "data.split=test")[0] == want
    with pytest.raises(InputError, match=r"data.split='dev' is not in .*its splits: train, test"):
        encoded(tmp_path / "dd", tokenizer, "data.split=dev")
    with pytest.raises(InputError, match=r"data.split=test: .*train.parquet names files"):
        spec(tmp_path / "train.parquet", "data.split=test")


def test_a_broken_parquet_row_is_reported_with_its_row_index(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["response"] = None
    rows[4]["response"] = "  "
    s = spec(write("parquet", tmp_path, rows))
    loaded = registry.build("data", s).load(0)
    assert len(loaded.train) == 4
    assert loaded.report.where == {"missing field 'response'": ["train.parquet[2]"],
                                   "empty field 'response'": ["train.parquet[4]"]}
    assert [ex.source for ex in loaded.train] == ["train.parquet[0]", "train.parquet[1]", "train.parquet[3]",
                                                   "train.parquet[5]"]


def test_a_hub_id_without_hub_access_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError) as e:
        registry.build("data", spec("someorg/some-dataset")).load(0)
    text = e.value.render()
    assert "someorg/some-dataset" in text and "data.path=/path/to/train.parquet" in text and "save_to_disk" in text

    from tuneforge.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "recipe=quickstart_tiny", "data=jsonl", "data.path=someorg/some-dataset"]) == 2
    out, err = capsys.readouterr()
    assert "save_to_disk" in err and "model:" not in out


def test_a_missing_file_is_not_taken_for_a_hub_id(tmp_path):
    for path in (tmp_path / "nope.parquet", "nope.jsonl", f"{tmp_path}/none-*.parquet"):
        with pytest.raises(InputError, match="data file not found"):
            registry.build("data", spec(path)).load(0)


def test_tokenization_cache_hits_and_misses(tmp_path, tokenizer):
    path = write("parquet", tmp_path)

    def run(*overrides):
        s = spec(path, *overrides)
        loaded = registry.build("data", s).load(0)
        calls = []
        done = encode_cached(loaded.train, tokenizer, s, loaded.report, advance=calls.append)
        return done, len(calls), loaded.report

    first, n, _ = run("data.max_length=16")
    assert not first.reused and n == len(ROWS) and first.path.parent == tmp_path / "cache" / "tokenized"
    second, n, report = run("data.max_length=16")
    assert second.reused and n == 0 and second.path == first.path  # nothing was tokenized again
    assert [(s.input_ids, s.labels, s.source) for s in second.samples] == \
           [(s.input_ids, s.labels, s.source) for s in first.samples]
    fresh = RowReport()
    dropped = encode(registry.build("data", spec(path, "data.max_length=16")).load(0).train, tokenizer,
                     spec(path, "data.max_length=16"), fresh)
    assert len(dropped) == len(second.samples) and report.where == fresh.where  # drops replayed on a hit

    changed_config, n, _ = run("data.max_length=64")
    assert not changed_config.reused and n == len(ROWS)
    write("parquet", tmp_path, [*ROWS[:-1], {"prompt": "What is 1 plus 1?", "response": "It is 2."}])
    changed_file, _, _ = run("data.max_length=16")
    assert not changed_file.reused and changed_file.path != first.path
    off, n, _ = run("data.max_length=16", "data.cache=false")
    assert not off.reused and off.path is None and n == len(ROWS)


def test_streaming_yields_the_first_samples_of_the_full_load_and_reads_no_further(tmp_path, tokenizer):
    path = write("parquet", tmp_path)
    full, _ = encoded(path, tokenizer)
    s = spec(path, "data.streaming=true", "trainer.max_steps=1")
    loaded = registry.build("data", s).load(0)
    taken = encode(loaded.train, tokenizer, s, loaded.report, until=3)
    assert [(x.input_ids, x.labels) for x in taken] == full[:3]
    assert next(iter(loaded.train)).source == "train.parquet[3]"  # the stream was read only as far as needed

    s = spec(path, "data.streaming=true", "trainer.max_steps=1", "data.packing=true", "data.max_length=64")
    taken = encode(registry.build("data", s).load(0).train, tokenizer, s, RowReport(), until=2)
    assert len(pack(taken[:-1], 64)) == 2 and len(pack(taken, 64)) == 3  # two packs filled, the next one begun


def test_streaming_cross_axis_checks_name_the_fix(tmp_path):
    path = write("parquet", tmp_path)
    with pytest.raises(InputError) as e:
        compose(["data=jsonl", f"data.path={path}", "data.streaming=true", "selection=random", "trainer.max_steps=-1"])
    text = e.value.render()
    assert "set trainer.max_steps=N" in text and "data.eval_path=<eval data> or data.eval_split=0" in text
    assert "set selection=none" in text


def test_a_run_reuses_the_cache_and_streams(tmp_path):
    """Two real runs: the second streams its training rows and reuses the first run's tokenized eval samples."""
    from tests.conftest import train_here

    rows = [{"prompt": f"What is {i} plus {i}?", "response": str(2 * i)} for i in range(30)]
    (tmp_path / "eval").mkdir()
    train, evals = write("parquet", tmp_path, rows[:24]), write("parquet", tmp_path / "eval", rows[24:])
    args = ["recipe=quickstart_tiny", "data=jsonl", f"data.path={train}", f"data.eval_path={evals}",
            "trainer.max_steps=1", "data.checker=none"]
    first = (train_here(*args, out=tmp_path / "a") / "train.log").read_text()
    assert "data: tokenized 24 train rows" in first and "data: tokenized 6 eval rows" in first
    second = (train_here(*args, "data.streaming=true", out=tmp_path / "b") / "train.log").read_text()
    assert "data: streamed 4 train samples" in second  # 1 step x 4 samples, the rest of the file unread
    assert "data: reused the tokenized eval samples cached in" in second
