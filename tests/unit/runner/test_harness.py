"""The lm-eval glue without a model: headline metrics from lm-eval's results, summary.json merging, sweep rows,
the harness group in old and new run configs. (Real lm-eval runs: tests/integration/test_harness.py.)"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tuneforge.config.compose import compose, harness_spec_of, load_run_config
from tuneforge.errors import InputError
from tuneforge.runner import harness
from tuneforge.runner.sweep import _result

RESULTS = {"results": {  # lm-eval 0.4's shape: "metric,filter" keys, standard errors, "N/A" without bootstrap
    "tuneforge_gsm8k_local": {"alias": "tuneforge_gsm8k_local", "sample_len": 20, "exact_match,strict-match": 0.25,
                              "exact_match_stderr,strict-match": "N/A", "exact_match,flexible-extract": 0.5,
                              "exact_match_stderr,flexible-extract": 0.1},
    "capitals_mc": {"alias": "capitals_mc", "acc,none": 1.0, "acc_stderr,none": 0.0}}}


def test_headline_keeps_numbers_names_filters_and_drops_stderr():
    assert harness.headline(RESULTS) == {
        "tuneforge_gsm8k_local": {"exact_match/strict-match": 0.25, "exact_match/flexible-extract": 0.5},
        "capitals_mc": {"acc": 1.0}}


def test_record_merges_task_by_task_and_keeps_the_summary(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "eval": {"eval_loss": 1.5},
                                                       "harness": {"old_task": {"acc": 0.3}, "capitals_mc": {"acc": 0}}}))
    harness.record(tmp_path, harness.headline(RESULTS))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "completed" and s["eval"] == {"eval_loss": 1.5}
    assert s["harness"]["old_task"] == {"acc": 0.3} and s["harness"]["capitals_mc"] == {"acc": 1.0}
    assert s["harness"]["tuneforge_gsm8k_local"]["exact_match/strict-match"] == 0.25


def test_sweep_rows_carry_the_harness_metrics(tmp_path):
    harness.record(tmp_path, harness.headline(RESULTS))
    row = _result(0, ["optim.lr=1e-3"], tmp_path, 0)
    assert row["harness"]["capitals_mc"]["acc"] == 1.0
    assert _result(1, [], tmp_path / "missing", 1)["harness"] == {}


def test_harness_group_composes_and_old_runs_load_without_it(tmp_path):
    cfg = compose(["recipe=lora_tiny", "harness.tasks=[tuneforge_gsm8k_local]", "harness.limit=0.5"])
    assert list(cfg.harness.tasks) == ["tuneforge_gsm8k_local"] and cfg.harness.limit == 0.5
    raw = OmegaConf.to_container(cfg)
    del raw["harness"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(raw))
    old = load_run_config(tmp_path)
    assert list(old.harness.tasks) == [] and old.harness.model == "merged"
    spec = harness_spec_of(old, ["harness.tasks=[tuneforge_gsm8k_local]", "harness.num_fewshot=2"])
    assert spec.tasks == ["tuneforge_gsm8k_local"] and spec.num_fewshot == 2
    with pytest.raises(InputError) as e:
        harness_spec_of(old, ["harness.modle=adapter", "harness.batch_size=0"])
    assert "did you mean 'model'" in e.value.render()
    with pytest.raises(InputError) as e:
        harness_spec_of(old, ["harness.batch_size=0", "harness.model=lora"])
    assert len(e.value.problems) == 3 and "no lm-eval tasks" in e.value.render()  # 2 bad values, no tasks
