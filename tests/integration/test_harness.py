"""EleutherAI's lm-eval on trained runs (tuneforge/runner/harness.py): real lm-eval (HFLM, simple_evaluate) on a real
tiny LoRA run, offline: the shipped task reads tuneforge/data/examples/qa.jsonl, a user's task YAML reads a JSONL
in the test's directory. Tiny limits keep generation short (a few seconds on 2 cores)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import summary, train_here
from tuneforge.cli import main

pytest.importorskip("lm_eval")

TASK = "tuneforge_gsm8k_local"
QUICK = ["harness.limit=2", "harness.max_gen_toks=4", "harness.batch_size=2"]
USER_TASK = """\
task: capitals_mc
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "The capital of {{{{country}}}} is"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
CAPITALS = [("France", ["Paris", "Rome", "Oslo"], 0), ("Japan", ["Lima", "Tokyo", "Cairo"], 1),
            ("Kenya", ["Nairobi", "Quito", "Hanoi"], 0)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may need the network: hub and datasets downloads are refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step LoRA run that runs the shipped task at the end of training (trainer's eval_harness phase)."""
    out = tmp_path_factory.mktemp("harness") / "run"
    return train_here("recipe=lora_tiny", "trainer.max_steps=2", "trainer.save_every=0", "trainer.eval_at_start=false",
                      f"harness.tasks=[{TASK}]", "harness.log_samples=true", *QUICK, out=out)


def samples(run_dir, task):
    return [json.loads(line) for line in (run_dir / "harness" / f"samples_{task}.jsonl").read_text().splitlines()]


def test_training_ends_with_lm_eval_into_summary(run):
    s = summary(run)
    assert s["status"] == "completed" and s["steps"] == 2 and "eval_loss" in s["eval"], s
    assert set(s["harness"][TASK]) == {"exact_match/strict-match", "exact_match/flexible-extract"}
    assert s["phase_s"]["eval_harness"] > 0 and s["optimizer_state_bytes"]
    results = json.loads((run / "harness" / "results.json").read_text())
    assert results["n-samples"][TASK]["effective"] == 2 and "samples" not in results
    rows = samples(run, TASK)  # one row per example and filter
    assert sorted({r["doc_id"] for r in rows}) == [0, 1] and {r["filter"] for r in rows} == {"strict-match", "flexible-extract"}
    for metric in ("strict-match", "flexible-extract"):  # the headline is lm-eval's mean over its samples
        scores = [r["exact_match"] for r in rows if r["filter"] == metric]
        assert s["harness"][TASK][f"exact_match/{metric}"] == pytest.approx(sum(scores) / len(scores))
    assert "lm-eval" in (run / "train.log").read_text()


def test_eval_command_adapter_model_and_user_tasks_merge_into_summary(run, tmp_path, capsys):
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"country": c, "choices": ch, "answer": a}) + "\n" for c, ch, a in CAPITALS))
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "capitals.yaml").write_text(USER_TASK.format(data=data, cache=tmp_path / "hf_cache"))
    before, trained = summary(run), samples(run, TASK)
    code = main(["eval", f"run_dir={run}", f"harness.tasks=[{TASK},capitals_mc]", f"harness.include_path=[{tasks}]",
                 "harness.model=adapter", "harness.log_samples=true", *QUICK])
    assert code == 0, capsys.readouterr().err
    s = summary(run)
    assert {k: v for k, v in s.items() if k != "harness"} == {k: v for k, v in before.items() if k != "harness"}
    assert set(s["harness"]) == {TASK, "capitals_mc"} and 0 <= s["harness"]["capitals_mc"]["acc"] <= 1
    # LoRA: the model as trained (adapter layers in place) generates what the merged model generated in training
    assert [r["resps"] for r in samples(run, TASK)] == [r["resps"] for r in trained]
    assert sorted(r["doc_id"] for r in samples(run, "capitals_mc")) == [0, 1]


def test_bad_harness_input_is_refused_before_any_model_loads(run, tmp_path, capsys):
    results = run / "harness" / "results.json"
    written = results.stat().st_mtime_ns
    code = main(["eval", f"run_dir={run}", "harness.tasks=[tuneforge_gsm8k_locl,hellaswagg]", *QUICK])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "did you mean 'tuneforge_gsm8k_local'" in err and "did you mean 'hellaswag'" in err
    assert main(["eval", f"run_dir={tmp_path}", f"harness.tasks=[{TASK}]"]) == 2
    assert "not a tuneforge run directory" in capsys.readouterr().err
    assert main(["eval", f"run_dir={run}", f"harness.tasks=[{TASK}]", "harness.limit=0", "trainer.seed=1"]) == 2
    err = capsys.readouterr().err
    assert "limit=0.0 must be > 0" in err and "the run's other settings are fixed" in err
    assert main(["eval", f"run_dir={run}", f"harness.tasks=[{TASK}]", "harness.include_path=[/no/such/dir]"]) == 2
    assert "/no/such/dir is not a directory" in capsys.readouterr().err
    assert results.stat().st_mtime_ns == written  # lm-eval never ran


def test_missing_lm_eval_names_the_extra(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: `import lm_eval` raises ImportError
    code = main(["eval", f"run_dir={run}", f"harness.tasks=[{TASK}]"])
    assert code == 2 and "pip install 'tuneforge[eval]'" in capsys.readouterr().err
