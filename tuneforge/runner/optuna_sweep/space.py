"""The search: the sweeper's knobs and the search space, read from the command line and an optional YAML file.

    hydra/sweeper=optuna                               selects this sweeper (no other effect)
    hydra.sweeper.<knob>=value                         a knob of `OptunaSpec` (n_trials, metric, pruner, ...)
    hydra.sweeper.file=search.yaml                     knobs and `params` from a YAML file (the command line wins)
    hydra.sweeper.params.<key>=<sweep>                 a searched key, e.g. ...params.optim.lr=tag(log,interval(1e-5,1e-3))
    <key>=<sweep>                                      the same, written directly: peft.r=range(4,16,step=4)
    <key>=value                                        fixed for every trial

A sweep is Hydra's override grammar, mapped to optuna distributions:

    interval(a,b)              float in [a, b]                        FloatDistribution(a, b)
    tag(log,interval(a,b))     float, log-uniform                     FloatDistribution(a, b, log=True)
    tag(int,interval(a,b))     integer in [a, b] (tag(int,log,...))   IntDistribution(a, b[, log=True])
    range(a,b[,step=s])        a, a+s, ... < b (Hydra's range: b excluded) -> Int/FloatDistribution(a, last, step=s)
    choice(x,y,...) or x,y,... one of the values                      CategoricalDistribution
    shuffle(...)               as its values, unordered               CategoricalDistribution
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tuneforge.config.spec import Spec, SpecError, knob
from tuneforge.errors import InputError, did_you_mean

SELECT = "hydra/sweeper=optuna"
PREFIX = "hydra.sweeper."
PARAMS = "hydra.sweeper.params."
DIRECTIONS, SAMPLERS, PRUNERS = ("auto", "minimize", "maximize"), ("tpe", "random"), ("median", "hyperband", "none")
HIGHER_IS_BETTER = ("exact_match",)  # metrics (and their per-task forms) that direction=auto maximizes
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "bits_per_byte")  # lm-eval metric names direction=auto minimizes
HARNESS = "harness/"  # metric=harness/<task>/<metric>: lm-eval's headline metric in summary.json (end of run only)


@dataclass
class OptunaSpec(Spec):
    n_trials: int = knob(10, "trials the study holds when the search ends (finished, pruned or failed); a rerun with "
                             "a larger n_trials continues the same study")
    metric: str = knob("eval_loss", "the key of the run's eval (summary.json `eval`) to optimize: eval_loss, "
                                    "eval_ppl, exact_match, eval_loss/<task>, exact_match/<task>; or "
                                    "harness/<task>/<metric> (lm-eval at the end of the run: nothing to prune on)")
    direction: str = knob("auto", "minimize, maximize, or auto (maximize exact_match and lm-eval scores, minimize "
                                  "losses and perplexities)")
    sampler: str = knob("tpe", "tpe (optuna's TPESampler) or random")
    seed: int = knob(42, "seed of the sampler (a resumed study reseeds with seed + the trials it already has)")
    startup_trials: int = knob(4, "tpe: random trials before the sampler models the results")
    pruner: str = knob("median", "median (stop a trial whose eval is worse than the median of earlier trials at "
                                 "the same step), hyperband, or none")
    pruner_startup_trials: int = knob(2, "median: trials that must finish before any trial is pruned")
    pruner_warmup_steps: int = knob(0, "median: optimizer steps a trial runs before it can be pruned")
    study_name: str = knob("tuneforge", "name of the study in the storage")
    storage: Optional[str] = knob(None, "optuna storage URL; default sqlite:///<sweep_dir>/optuna.db")
    in_process: bool = knob(False, "run one-rank trials in this process (no interpreter start-up per trial; a crash "
                                   "of a trial ends the search); default: each trial in its own processes")
    file: Optional[str] = knob(None, "a YAML file of these knobs and `params` (the command line wins)")
    params: dict = knob({}, "searched key -> Hydra sweep, e.g. optim.lr: tag(log,interval(1e-5,1e-3))")

    def problems(self) -> list[str]:
        out = []
        for name, allowed in (("direction", DIRECTIONS), ("sampler", SAMPLERS), ("pruner", PRUNERS)):
            value = getattr(self, name)
            if value not in allowed:
                out.append(f"hydra.sweeper.{name}={value}{did_you_mean(value, allowed)}: choose {', '.join(allowed)}")
        for name in ("n_trials",):
            if getattr(self, name) < 1:
                out.append(f"hydra.sweeper.{name}={getattr(self, name)} must be >= 1")
        for name in ("startup_trials", "pruner_startup_trials", "pruner_warmup_steps"):
            if getattr(self, name) < 0:
                out.append(f"hydra.sweeper.{name}={getattr(self, name)} must be >= 0")
        return out

    @property
    def maximize(self) -> bool:
        if self.direction != "auto":
            return self.direction == "maximize"
        if self.metric.startswith(HARNESS):
            return not any(word in self.metric for word in LOWER_IS_BETTER)
        return self.metric.split("/")[0] in HIGHER_IS_BETTER


def metric_value(summary: dict, metric: str):
    """The metric's value in a run's summary.json (None when it has none)."""
    if metric.startswith(HARNESS):
        _, task, name = (metric.split("/", 2) + ["", ""])[:3]
        return (summary.get("harness") or {}).get(task, {}).get(name)
    return (summary.get("eval") or {}).get(metric)


@dataclass
class Param:
    """One searched key: its distribution and the values a trial is validated at before the study starts."""

    key: str
    text: str  # the sweep as written, e.g. tag(log,interval(1e-05,0.001))
    dist: Any  # an optuna distribution

    def corners(self) -> list:
        """The bounds of a numeric range, or every choice."""
        from optuna.distributions import CategoricalDistribution

        if isinstance(self.dist, CategoricalDistribution):
            return list(self.dist.choices)
        return [self.dist.low, self.dist.high]


@dataclass
class Search:
    spec: OptunaSpec
    params: list[Param]
    fixed: list[str]  # overrides every trial gets
    identity: list[str] = field(default_factory=list)  # what makes two commands the same search (n_trials aside)


def value_text(v) -> str:
    """A value as a Hydra override writes it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def assignment(params: dict) -> list[str]:
    return [f"{k}={value_text(v)}" for k, v in params.items()]


def parse(overrides: list[str]) -> Search:
    """The search a command line describes; one InputError listing every problem."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, problems = OverridesParser.create(), []
    knobs, sweeps, fixed = {}, {}, []
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except Exception as e:  # Hydra's grammar errors are long: keep the first line
            problems.append(f"cannot parse '{text}': {str(e).splitlines()[0]}")
            continue
        key = o.get_key_element()
        if key == "hydra/sweeper":
            if o.value() != "optuna":
                problems.append(f"'{text}': this sweep runs with hydra/sweeper=optuna")
        elif key.startswith(PARAMS):
            sweeps[key[len(PARAMS):]] = o, text.split("=", 1)[1]
        elif key.startswith(PREFIX):
            knobs[key[len(PREFIX):]] = o.value()
        elif o.is_sweep_override():
            sweeps[key] = o, text.split("=", 1)[1]
        else:
            fixed.append(text)
    spec = _spec(knobs, problems)
    params = [p for k, (o, raw) in sweeps.items() if (p := _param(k, o, raw, problems)) is not None]
    file_params = spec.params if spec is not None else {}
    for key, value in file_params.items():
        if key in sweeps:
            continue
        text = f"{key}={value}" if not isinstance(value, list) else f"{key}=choice({','.join(map(value_text, value))})"
        try:
            (o,) = parser.parse_overrides([text])
        except Exception as e:
            problems.append(f"hydra.sweeper.params.{key}: cannot parse '{value}': {str(e).splitlines()[0]}")
            continue
        if not o.is_sweep_override():
            fixed.append(text)
        elif (param := _param(key, o, str(value), problems)) is not None:
            params.append(param)
    searched = {p.key for p in params}
    for text in fixed:
        if text.split("=", 1)[0].lstrip("+~") in searched:
            problems.append(f"'{text}' fixes a key the search also varies: drop one of them")
    if not params and not sweeps and not file_params:
        problems.append("no search space: add a sweep, e.g. optim.lr=tag(log,interval(1e-5,1e-3)) or "
                        "hydra.sweeper.params.peft.r=choice(4,8,16)")
    if problems or spec is None:
        raise InputError(problems, title="optuna search not started")
    identity = [o for o in fixed if not o.startswith(("trainer.resume=", "trainer.output_dir="))]
    identity += sorted(f"{p.key}={p.text}" for p in params)
    return Search(spec, params, fixed, identity + [f"study={spec.study_name}"])


def _spec(knobs: dict, problems: list[str]) -> OptunaSpec | None:
    """Knobs from hydra.sweeper.file (if given), then the command line, typed onto OptunaSpec."""
    merged: dict = {}
    path = knobs.get("file")
    if path is not None:
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(Path(str(path))))
        except (OSError, OmegaConfBaseException) as e:
            problems.append(f"hydra.sweeper.file={path}: cannot read it ({str(e).splitlines()[0]})")
            loaded = {}
        if isinstance(loaded, dict) and set(loaded) == {"hydra"}:  # a file written as hydra: {sweeper: {...}}
            loaded = (loaded["hydra"] or {}).get("sweeper", {})
        if not isinstance(loaded, dict):
            problems.append(f"hydra.sweeper.file={path}: expected a mapping of knobs (n_trials:, params:, ...)")
            loaded = {}
        merged.update(loaded)
    merged.update(knobs)
    names = [f.name for f in fields(OptunaSpec)]
    typed, n = OmegaConf.structured(OptunaSpec), len(problems)
    for key, value in merged.items():
        if key not in names:
            problems.append(f"unknown key 'hydra.sweeper.{key}'{did_you_mean(str(key), names)}; the optuna "
                            f"sweeper's keys: {', '.join(names)}")
            continue
        try:
            typed = OmegaConf.merge(typed, {key: value})
        except OmegaConfBaseException as e:
            problems.append(f"hydra.sweeper.{key}={value!r}: {str(e).splitlines()[0]}")
    if len(problems) > n:
        return None
    try:
        return OmegaConf.to_object(typed)
    except SpecError as e:  # the range checks (Spec.__post_init__), all of them
        problems += e.problems
        return None


def _param(key: str, o, text: str, problems: list[str]) -> Param | None:
    """A sweep override -> Param; a problem (and None) when it does not describe a distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = o.value()
    where = f"{key}={text}"
    try:
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = list(o.sweep_iterator(transformer=Transformer.encode))
            bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
            if bad or not choices:
                raise ValueError("choices must be plain values (numbers, strings, true/false), at least one")
            if len(set(map(value_text, choices))) != len(choices):
                raise ValueError("a value is listed twice")
            return Param(key, text, CategoricalDistribution(choices))
        if isinstance(value, RangeSweep):
            items = list(o.sweep_iterator())
            if not items:
                raise ValueError(f"the range is empty (Hydra's range excludes its end: range({value.start},"
                                 f"{value.stop}) stops before {value.stop})")
            if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
                return Param(key, text, IntDistribution(int(items[0]), int(items[-1]), step=int(value.step)))
            return Param(key, text, FloatDistribution(float(items[0]), float(items[-1]), step=float(value.step)))
        if isinstance(value, IntervalSweep):
            unknown = set(value.tags) - {"log", "int"}
            if unknown:
                raise ValueError(f"unknown tag {', '.join(sorted(unknown))}: the tags are log and int")
            lo, hi, log = value.start, value.end, "log" in value.tags
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
                raise ValueError(f"the interval needs low < high (got {lo}, {hi})")
            if log and lo <= 0:
                raise ValueError(f"a log interval needs low > 0 (got {lo})")
            if "int" in value.tags:
                if lo != int(lo) or hi != int(hi):
                    raise ValueError("tag(int, ...) needs whole-number bounds")
                return Param(key, text, IntDistribution(int(lo), int(hi), log=log))
            return Param(key, text, FloatDistribution(float(lo), float(hi), log=log))
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return None
    problems.append(f"{where}: not a search space (use interval, tag(log,interval(..)), range or choice)")
    return None


def suggest(trial, param: Param):
    """The trial's value of `param` (optuna's public suggest API; a retried trial gets its enqueued value)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    d = param.dist
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(param.key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(param.key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(param.key, d.low, d.high, step=d.step, log=d.log)


def metric_problems(metric: str, specs: dict) -> list[str]:
    """The metric must be a key of the run's eval row (runner.evaluate): loss and perplexity always, exact match
    with an answer checker, per-task forms with multi-task data; or harness/<task>/<metric> of a harness task."""
    data, tasks = specs["data"], list(specs["harness"].tasks)
    if metric.startswith(HARNESS):
        task = (metric.split("/") + [""])[1]
        if metric.count("/") < 2 or task not in tasks:
            return [f"hydra.sweeper.metric={metric}: lm-eval metrics are harness/<task>/<metric> of a task in "
                    f"harness.tasks (now: {tasks or 'none'}), e.g. harness/{(tasks or ['TASK'])[0]}/exact_match"]
        return []
    known = ["eval_loss", "eval_ppl"] + [f"eval_loss/{t}" for t in data.tasks]
    if data.checker != "none":
        known += ["exact_match"] + [f"exact_match/{t}" for t in data.tasks]
    if metric in known:
        return []
    return [f"hydra.sweeper.metric={metric}{did_you_mean(metric, known)}: not in this run's eval; "
            f"choose {', '.join(known)}"]
