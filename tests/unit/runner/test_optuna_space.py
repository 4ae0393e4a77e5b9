"""The optuna search space: Hydra sweeps on the command line and in a YAML file -> optuna distributions, the
sweeper's knobs, and every problem of a bad search reported at once."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from tuneforge.errors import InputError  # noqa: E402
from tuneforge.runner.optuna_sweep.search import corners  # noqa: E402
from tuneforge.runner.optuna_sweep.space import metric_problems, parse  # noqa: E402


def space(*overrides: str) -> dict:
    return {p.key: p.dist for p in parse(["hydra/sweeper=optuna", *overrides]).params}


def test_each_distribution_kind():
    got = space("optim.lr=tag(log,interval(1e-5,1e-3))", "optim.weight_decay=interval(0,0.1)",
                "peft.r=range(4,16,step=4)", "trainer.micro_batch_size=choice(2,4)", "peft.alpha=tag(int,interval(8,64))",
                "peft.dropout=range(0.0,0.3,0.1)", "peft=lora,dora", "trainer.grad_accum=tag(int,log,interval(1,8))")
    assert got["optim.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert got["optim.weight_decay"] == FloatDistribution(0.0, 0.1)
    assert got["peft.r"] == IntDistribution(4, 12, step=4)  # Hydra's range excludes its end: 4, 8, 12
    assert got["trainer.micro_batch_size"] == CategoricalDistribution([2, 4])
    assert got["peft.alpha"] == IntDistribution(8, 64)
    assert got["peft.dropout"].step == pytest.approx(0.1) and got["peft.dropout"].high == pytest.approx(0.2)
    assert got["peft"] == CategoricalDistribution(["lora", "dora"])
    assert got["trainer.grad_accum"] == IntDistribution(1, 8, log=True)


def test_params_key_and_fixed_overrides_and_knobs():
    s = parse(["hydra/sweeper=optuna", "recipe=quickstart_tiny", "hydra.sweeper.params.optim.lr=tag(log,interval(1e-5,1e-3))",
               "hydra.sweeper.n_trials=7", "hydra.sweeper.metric=exact_match", "hydra.sweeper.pruner=hyperband",
               "hydra.sweeper.sampler=random", "trainer.max_steps=3"])
    assert [p.key for p in s.params] == ["optim.lr"]
    assert s.fixed == ["recipe=quickstart_tiny", "trainer.max_steps=3"]
    spec = s.spec
    assert (spec.n_trials, spec.metric, spec.pruner, spec.sampler) == (7, "exact_match", "hyperband", "random")
    assert spec.maximize  # direction=auto: exact match is maximized, losses minimized
    assert not parse(["optim.lr=interval(0.1,1)", "hydra.sweeper.direction=minimize",
                      "hydra.sweeper.metric=exact_match"]).spec.maximize


def test_yaml_file_declares_the_space_and_the_command_line_wins(tmp_path):
    f = tmp_path / "search.yaml"
    f.write_text("n_trials: 20\nmetric: eval_loss\nparams:\n  optim.lr: tag(log, interval(1e-5, 1e-2))\n"
                 "  peft.r: [4, 8, 16]\n  trainer.max_steps: 5\n")
    s = parse([f"hydra.sweeper.file={f}", "hydra.sweeper.n_trials=3", "peft.r=choice(2,4)"])
    got = {p.key: p.dist for p in s.params}
    assert got == {"peft.r": CategoricalDistribution([2, 4]), "optim.lr": FloatDistribution(1e-5, 1e-2, log=True)}
    assert s.spec.n_trials == 3 and s.fixed == ["trainer.max_steps=5"]
    # the same file written as a Hydra config's hydra.sweeper node
    f.write_text("hydra:\n  sweeper:\n    params:\n      optim.lr: interval(0.1, 0.2)\n")
    assert [p.key for p in parse([f"hydra.sweeper.file={f}"]).params] == ["optim.lr"]


def test_identity_ignores_n_trials_and_resume():
    a = parse(["optim.lr=interval(0.1,1)", "peft.r=4,8", "hydra.sweeper.n_trials=3"]).identity
    b = parse(["peft.r=4,8", "trainer.resume=auto", "optim.lr=interval(0.1,1)", "hydra.sweeper.n_trials=6"]).identity
    assert a == b


def test_corners_cover_bounds_and_choices():
    s = parse(["optim.lr=tag(log,interval(1e-5,1e-3))", "peft.r=choice(4,8,16)"])
    got = corners(s.params)
    assert got[0] == {"optim.lr": 1e-5, "peft.r": 4}
    assert {"optim.lr": 1e-3, "peft.r": 4} in got and {"optim.lr": 1e-5, "peft.r": 16} in got
    assert len(got) == 1 + 1 + 2


def test_every_problem_at_once(tmp_path):
    with pytest.raises(InputError) as e:
        parse(["hydra/sweeper=tpe", "optim.lr=tag(log,interval(0,1e-3))", "peft.r=range(8,4)", "a=interval(2,1)",
               "b=tag(loog,interval(1,2))", "c=tag(int,interval(1.5,3))", "d=choice(1,1)", "hydra.sweeper.n_trails=3",
               "hydra.sweeper.direction=up", "hydra.sweeper.pruner=meadian", "hydra.sweeper.n_trials=0",
               "hydra.sweeper.params.e=[1,2", f"hydra.sweeper.file={tmp_path / 'missing.yaml'}"])
    text = str(e.value)
    for part in ("hydra/sweeper=tpe", "log interval needs low > 0", "range is empty", "needs low < high",
                 "unknown tag loog", "whole-number bounds", "listed twice", "'hydra.sweeper.n_trails' (did you mean "
                 "'n_trials'?)", "hydra.sweeper.file=", "cannot parse 'hydra.sweeper.params.e=[1,2'"):
        assert part in text, part
    assert e.value.problems and "optuna search not started" in text


def test_knob_values_and_missing_space():
    with pytest.raises(InputError) as e:
        parse(["hydra.sweeper.direction=up", "hydra.sweeper.pruner=meadian", "hydra.sweeper.n_trials=0",
               "hydra.sweeper.seed=abc"])
    text = str(e.value)
    assert "hydra.sweeper.seed='abc'" in text  # a type error stops the knob checks; fix it first
    with pytest.raises(InputError) as e:
        parse(["hydra.sweeper.direction=up", "hydra.sweeper.pruner=meadian", "hydra.sweeper.n_trials=0", "trainer.seed=3"])
    text = str(e.value)
    assert "choose auto, minimize, maximize" in text and "(did you mean 'median'?)" in text
    assert "n_trials=0 must be >= 1" in text and "no search space" in text


def test_a_key_both_fixed_and_searched():
    with pytest.raises(InputError, match="fixes a key the search also varies"):
        parse(["optim.lr=1e-3", "hydra.sweeper.params.optim.lr=interval(1e-4,1e-2)"])


def test_metric_must_be_in_the_runs_eval():
    from tuneforge.config.run import Run

    specs = Run.compose(["recipe=quickstart_tiny"]).specs
    assert metric_problems("exact_match", specs) == []
    (p,) = metric_problems("exact_mach", specs)
    assert "did you mean 'exact_match'" in p
    no_checker = Run.compose(["recipe=quickstart_tiny", "data.checker=none"]).specs
    assert metric_problems("exact_match", no_checker) and not metric_problems("eval_ppl", no_checker)
    (p,) = metric_problems("harness/tuneforge_gsm8k_local/exact_match", specs)  # no harness.tasks
    assert "harness/<task>/<metric>" in p
    harness = Run.compose(["recipe=quickstart_tiny", "harness.tasks=[tuneforge_gsm8k_local]"]).specs
    assert metric_problems("harness/tuneforge_gsm8k_local/exact_match/strict-match", harness) == []


def test_harness_metrics_direction_and_value():
    from tuneforge.runner.optuna_sweep.space import metric_value

    maximize = parse(["optim.lr=interval(0.1,1)", "hydra.sweeper.metric=harness/gsm8k/exact_match/strict-match"])
    assert maximize.spec.maximize
    assert not parse(["optim.lr=interval(0.1,1)", "hydra.sweeper.metric=harness/wikitext/word_perplexity"]).spec.maximize
    summary = {"eval": {"eval_loss": 2.0}, "harness": {"gsm8k": {"exact_match/strict-match": 0.25}}}
    assert metric_value(summary, "harness/gsm8k/exact_match/strict-match") == 0.25
    assert metric_value(summary, "eval_loss") == 2.0 and metric_value(summary, "harness/gsm8k/acc") is None
