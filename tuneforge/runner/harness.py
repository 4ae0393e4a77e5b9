"""EleutherAI's lm-eval (the evaluation harness) on a finished run's model.

    eval_dir(run_dir, overrides) `tuneforge eval run_dir=DIR harness.tasks=[...]`: the three below
    check(spec)                 before any model loads: lm-eval installed, harness.include_path directories exist,
                                every task name known (did you mean ...?)
    evaluate_run(run, spec)     the run's final model (merged, or as trained with its adapter layers) through
                                lm-eval's HFLM and `simple_evaluate`; lm-eval's results in <run_dir>/harness/
    record(run_dir, headline)   the headline metrics merged into <run_dir>/summary.json under "harness"

Task names resolve against tuneforge's shipped tasks (tuneforge/data/harness_tasks/, data inside the package, so
they run offline) and the user's harness.include_path first; only a name not found there is looked up among
lm-eval's own tasks (their names cached per lm-eval version: indexing lm-eval's ~15k task YAMLs takes seconds). Headline metrics are {task: {metric: value}}, lm-eval's "metric,filter" keys
written "metric" (filter "none") or "metric/filter", so a sweep or a Hydra override can name them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
from rich.markup import escape

from tuneforge import registry
from tuneforge.config.checks import run_device
from tuneforge.config.compose import harness_spec_of
from tuneforge.config.run import Run
from tuneforge.errors import InputError, did_you_mean
from tuneforge.logging import secrets
from tuneforge.runner.model import rebuild
from tuneforge.runner.weights import FILE

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "harness_tasks"
INSTALL = "pip install 'tuneforge[eval]' (EleutherAI's lm-eval)"


def task_manager(spec):
    """lm-eval's TaskManager for `spec`'s tasks: over tuneforge's shipped tasks and harness.include_path, plus
    lm-eval's own tasks when one of them is lm-eval's (indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=[str(SHIPPED), *spec.include_path], include_defaults=False)
    if all(t in local.all_tasks for t in spec.tasks):
        return local
    return TaskManager(include_path=[str(SHIPPED), *spec.include_path], include_defaults=True)


def builtin_tasks() -> list[str]:
    """lm-eval's own task, group and tag names, cached per lm-eval version in ~/.cache/tuneforge (lm-eval indexes
    its ~15k task YAMLs to list them: seconds, more on a busy machine)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneforge" / \
        f"lm_eval_tasks-{lm_eval.__version__}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(cache.read_text())
    names = TaskManager(include_defaults=True).all_tasks
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(names))
    return names


def check(spec) -> None:
    """Before any model loads: lm-eval installed, harness.include_path directories exist, every task name known
    (did you mean ...?). One InputError lists every problem."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InputError([f"harness.tasks={list(spec.tasks)} runs lm-eval, which is not installed: {INSTALL}"]) from None
    from lm_eval.tasks import TaskManager

    problems = [f"harness.include_path: {d} is not a directory (of lm-eval task YAMLs)"
                for d in spec.include_path if not Path(d).is_dir()]
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes and the pre-built-model warning
    dirs = [str(SHIPPED), *(d for d in spec.include_path if Path(d).is_dir())]
    local = TaskManager(include_path=dirs, include_defaults=False)
    unknown = [t for t in spec.tasks if t not in local.all_tasks]
    known = set(builtin_tasks()) if unknown else set()
    problems += [f"unknown lm-eval task '{t}'{did_you_mean(t, [*known, *local.all_tasks])}: `lm-eval ls tasks` lists "
                 f"lm-eval's tasks; tuneforge's and harness.include_path's: {', '.join(local.all_subtasks)}"
                 for t in unknown if t not in known]
    if problems:
        raise InputError(problems)


def eval_dir(run_dir: Path, overrides: list[str], log=print) -> dict:
    """`tuneforge eval run_dir=DIR harness.tasks=[...] [harness.<knob>=...]`: lm-eval on the finished run's model
    (its harness settings changed by the overrides); returns summary.json's updated "harness" entry."""
    run = Run.load(run_dir)
    problems = [] if (Path(run_dir) / "final" / FILE).is_file() else [
        f"run_dir={run_dir} holds no finished run (no final/{FILE}): finish it first (trainer.resume=auto)"]
    try:
        spec = harness_spec_of(run.cfg, overrides)
        check(spec)
    except InputError as e:
        raise InputError([*problems, *e.problems]) from None
    if problems:
        raise InputError(problems)
    return record(run_dir, evaluate_run(run, spec, log))["harness"]


def trained_model(run: Run, spec):
    """(model, tokenizer) of the run's final weights: merged (spec.model=merged, as `tuneforge export` writes it)
    or as trained, on the run's device."""
    specs = run.specs
    peft = specs["peft"].name
    if spec.model == "merged" and not registry.entry("peft", peft).builder.hf_export:
        raise InputError([f"peft={peft} does not merge into a Hugging Face model: evaluate it as trained with "
                          "harness.model=adapter"])
    specs, tok, model, method = rebuild(run)
    if method.variants():
        raise InputError([f"peft={peft} trains one model per task ({', '.join(method.variants())}): export it "
                          "(`tuneforge export`) and evaluate a variant with lm-eval directly"])
    if spec.model == "merged":
        with torch.no_grad():
            model = method.merged(model)
    return model.to("cuda" if run_device(specs) == "cuda" else "cpu").eval(), tok


def evaluate_run(run: Run, spec, log=print) -> dict:
    """Run lm-eval on the run's final model; write <run_dir>/harness/results.json (and samples_<task>.jsonl with
    harness.log_samples) and return the headline metrics {task: {metric: value}}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import make_table

    tm = task_manager(spec)
    model, tok = trained_model(run, spec)
    seed = run.specs["trainer"].seed
    lm = HFLM(pretrained=model, tokenizer=tok, backend="causal", batch_size=spec.batch_size)
    limit = None if spec.limit is None else (int(spec.limit) if spec.limit >= 1 else spec.limit)
    log(f"lm-eval {lm_eval.__version__}: {', '.join(spec.tasks)} on the {spec.model} model"
        + (f" (limit {limit})" if limit is not None else ""))
    with torch.no_grad():
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(spec.tasks), task_manager=tm, num_fewshot=spec.num_fewshot, limit=limit,
            log_samples=spec.log_samples, bootstrap_iters=spec.bootstrap_iters,
            gen_kwargs={"max_gen_toks": spec.max_gen_toks} if spec.max_gen_toks else None,
            apply_chat_template=spec.apply_chat_template, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed)
    log(escape(make_table(results)))
    write(results, Path(run.run_dir) / "harness")
    return headline(results)


def write(results: dict, out: Path) -> None:
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", None) or {}
    dump = json.dumps(results, indent=2, default=handle_non_serializable)
    (out / "results.json").write_text(json.dumps(secrets.redact_json(json.loads(dump)), indent=2))
    for task, rows in samples.items():
        lines = (json.dumps(row, default=handle_non_serializable) for row in rows)
        (out / f"samples_{task}.jsonl").write_text("".join(f"{line}\n" for line in lines))


def headline(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's results: numbers only, no standard errors."""
    out: dict[str, dict] = {}
    for task, row in results["results"].items():
        for key, value in row.items():
            metric, _, where = key.partition(",")
            if where and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out.setdefault(task, {})[metric if where == "none" else f"{metric}/{where}"] = value
    return out


def record(run_dir: Path, found: dict) -> dict:
    """Merge headline metrics into <run_dir>/summary.json["harness"] (task by task; every other key kept)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["harness"] = {**summary.get("harness", {}), **found}
    path.write_text(json.dumps(secrets.redact_json(summary), indent=2))
    return summary
