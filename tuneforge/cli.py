"""tuneforge command line.

    tuneforge train [-m] [recipe=NAME] [key=value ...]   run a recipe (or a sweep with -m)
    tuneforge train -m hydra/sweeper=optuna optim.lr=tag(log,interval(1e-5,1e-3)) ...   optuna search (docs/optuna.md)
    tuneforge train --cfg job|hydra|all [-p KEY] ...     print the composed config (Hydra's --cfg), run nothing
    tuneforge train --info ...                           config search path, groups and options, defaults tree
    --config-dir/-cd DIR (train, show, recipes)          user recipes DIR/*.yaml and options DIR/<group>/*.yaml
    tuneforge show [--doc] [recipe=NAME] [key=value ...] resolved config, DeepSpeed JSON and memory plan (no model)
    tuneforge plan [--json] [recipe=NAME] [key=value ...] memory per rank before anything loads; does it fit
                                                         plan.gpu_mem=80GB plan.gpus=8, and the cheapest fix
    tuneforge recipes                                    list recipes
    tuneforge eval run_dir=DIR                           re-evaluate a finished run
    tuneforge eval run_dir=DIR harness.tasks=[T,...]     EleutherAI lm-eval on it (results in DIR/harness, summary.json)
    tuneforge export run_dir=DIR [export=[merge,prune]]  run the export stages: merged HF model (+ PEFT adapter) in DIR/export
    tuneforge prune run_dir=DIR prune=wanda [prune.sparsity=0.5]   prune a finished run's merged model into DIR/pruned
    tuneforge prune [recipe=NAME] model=... prune=wanda out=DIR     prune a base model (calibration: the recipe's data)
    tuneforge merge DIR DIR ... merge=ties out=OUT      merge runs / exported models / LoRA adapters of one base
    tuneforge plot RUN_DIR... | SWEEP_DIR [out=FILE] [metric=eval_loss]   runs' curves (+ a sweep's metric by value)
    tuneforge ckpt verify DIR                            check a checkpoint (or every checkpoint of a run) file by file
    tuneforge ckpt convert DIR                           universal copy of a checkpoint, for another topology

Exit codes: 0 success, 2 bad config or input (nothing started), 1 failure during the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from tuneforge import hardware
from tuneforge.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError, RunError


def _console(stderr: bool = False):
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=True, stderr=stderr)
    if not con.is_terminal:
        con.width = 160  # logs and pipes: tables need not wrap at 80 columns
    return con


def quiet_libraries() -> None:
    import logging
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # torchao (imported by PEFT when installed) and bitsandbytes warn at import that kernels they would fetch or
    # load (CUDA builds, the kernels-community hub package) are not there; torchao also registers enums with
    # torch.utils._pytree the deprecated way. Neither is the user's to fix.
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "accelerate", "torchao", "torch.utils._pytree",
                 "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _with_config_dirs(args) -> list[str]:
    """The command's overrides, with --config-dir DIR as hydra.searchpath=[file://DIR] (Hydra's equivalent)."""
    dirs = [f"file://{Path(d).expanduser().absolute()}" for d in getattr(args, "config_dir", None) or []]
    return ([f"hydra.searchpath=[{','.join(dirs)}]"] if dirs else []) + list(args.overrides)


def cmd_train(args) -> int:
    from tuneforge.config.checks import cross_axis_warnings
    from tuneforge.config.run import Run
    from tuneforge.runner import sweep
    from tuneforge.runner.start import preflight, prepare_run_dir, start

    overrides = _with_config_dirs(args)
    if args.cfg or args.info:
        from tuneforge.runner.hydra_info import print_cfg, print_info

        con = _console()
        return print_info(con, overrides, args.multirun) if args.info else print_cfg(con, overrides, args.cfg, args.package,
                                                                        args.multirun)
    if args.package:
        raise InputError(["--package/-p selects what --cfg prints: add --cfg job|hydra|all"])
    if args.multirun:
        return sweep.main(overrides)
    run = Run.compose(overrides)
    merge = run.specs["merge"]  # train -> merge: the finished run merged with merge.inputs into run_dir/merged
    if merge.name != "none" and not merge.inputs:
        raise InputError([f"merge={merge.name} in a training run merges it after training with merge.inputs=[DIR,...]"
                          ": set them, or merge finished runs with `tuneforge merge DIR DIR ... out=DIR`"])
    for w in cross_axis_warnings(run.specs):
        _console().print(f"[yellow]warning:[/] {w}")
    preflight(run, log=_console().print)
    run_dir = prepare_run_dir(run)
    code = start(run)
    _console().print(f"run dir: {run_dir}")
    if code == EXIT_OK and merge.name != "none":
        from tuneforge.runner.offline import merge_run

        merge_run(run, [str(run_dir), *merge.inputs], run_dir / "merged", log=_console().print)
    return code


def cmd_show(args) -> int:
    from omegaconf import OmegaConf
    from rich.syntax import Syntax

    from tuneforge.config.run import Run
    from tuneforge.distributed.ds_config import run_ds_config
    from tuneforge.logging import secrets

    run = Run.compose(_with_config_dirs(args))
    secrets.absorb(run.cfg)
    con = _console()
    if args.doc:
        return _show_doc(con, run.specs)
    con.rule(f"resolved config: recipe={run.recipe}")
    con.print(Syntax(OmegaConf.to_yaml(run.cfg), "yaml", theme="ansi_dark", background_color="default"))
    con.rule(f"DeepSpeed config (world size {run.world_size})")
    ds = run_ds_config(run)
    con.print(Syntax(json.dumps(ds, indent=2), "json", theme="ansi_dark", background_color="default"))
    _show_plan(con, run)
    return EXIT_OK


def _show_plan(con, run) -> None:
    from tuneforge.plan.planner import plan_run
    from tuneforge.plan.report import render

    plan = plan_run(run)
    if plan is None:
        con.print(f"[dim]memory plan: the config of model.path={run.specs['model'].path} is not available offline[/]")
    else:
        render(con, plan, run.recipe)


def cmd_plan(args) -> int:
    from tuneforge.config.run import Run
    from tuneforge.plan.planner import plan_run
    from tuneforge.plan.report import render

    run = Run.compose(_with_config_dirs(args))
    plan = plan_run(run)
    if plan is None:
        raise InputError([f"model.path={run.specs['model'].path}: its config is not available offline and the preset "
                          "has no model.card: download the model, or give model.card (a config.json subset)"])
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        render(_console(), plan, run.recipe)
    return EXIT_OK


def _show_doc(con, specs) -> int:
    from rich.table import Table

    from tuneforge.config.spec import help_of

    for group, spec in specs.items():
        table = Table(title=f"{group}={getattr(spec, 'name', 'default')}", title_justify="left", show_header=False)
        table.add_column(style="bold cyan")
        table.add_column()
        table.add_column(style="dim")
        for key, text in help_of(type(spec)).items():
            table.add_row(f"{group}.{key}", repr(getattr(spec, key)), text)
        con.print(table)
    return EXIT_OK


def cmd_recipes(args) -> int:
    from rich.table import Table

    from tuneforge.config import hydra_node
    from tuneforge.config.compose import recipes

    args_, problems = hydra_node.read(hydra_node.split(_with_config_dirs(args))[0], multirun=False)
    if problems:
        raise InputError(problems)
    table = Table(title="recipes (tuneforge train recipe=NAME)", title_justify="left")
    table.add_column("recipe", style="bold")
    table.add_column("what it does")
    for name, desc in recipes(args_.user_dirs).items():
        table.add_row(name, desc)
    _console().print(table)
    return EXIT_OK


def _run_dir(overrides: list[str], rest: bool = False) -> Path:
    dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    if len(dirs) != 1 or (len(overrides) != 1 and not rest):
        raise InputError(["usage: tuneforge eval run_dir=DIR [harness.tasks=[...] harness.<knob>=...] | "
                          "tuneforge export run_dir=DIR [export=[...]] [export.<stage>.<knob>=...]"])
    path = Path(dirs[0])
    if not (path / "config.yaml").is_file():
        raise InputError([f"run_dir={path} is not a tuneforge run directory (no config.yaml)"])
    return path


def cmd_eval(args) -> int:
    from tuneforge.runner.offline import eval_run

    if any(o.startswith("harness") for o in args.overrides):  # lm-eval; else tuneforge's own eval
        from tuneforge.runner.harness import eval_dir

        con = _console()
        found = eval_dir(_run_dir(args.overrides, rest=True), [o for o in args.overrides if not o.startswith("run_dir=")],
                         log=con.print)
        con.print(json.dumps(found, indent=2))
        return EXIT_OK
    row = eval_run(_run_dir(args.overrides))
    _console().print(json.dumps(row, indent=2))
    return EXIT_OK


def cmd_export(args) -> int:
    from tuneforge.runner.offline import export_run

    con = _console()
    out = export_run(_run_dir(args.overrides, rest=True), [o for o in args.overrides if not o.startswith("run_dir=")],
                     log=con.print)
    con.print(f"exported: {out}" + (f" (adapter: {out / 'adapter'})" if (out / "adapter").is_dir() else ""))
    return EXIT_OK


def cmd_prune(args) -> int:
    from tuneforge.runner.offline import prune_model, prune_run

    outs = [Path(o.split("=", 1)[1]) for o in args.overrides if o.startswith("out=")]
    rest = [o for o in args.overrides if not o.startswith(("run_dir=", "out="))]
    if len(outs) > 1 or not (outs or any(o.startswith("run_dir=") for o in args.overrides)):
        raise InputError(["usage: tuneforge prune run_dir=DIR prune=<method> [prune.<knob>=...] | "
                          "tuneforge prune [recipe=NAME] model=... prune=<method> out=DIR"])
    con = _console()
    if any(o.startswith("run_dir=") for o in args.overrides):
        out = prune_run(_run_dir([o for o in args.overrides if not o.startswith("out=")], rest=True), rest,
                        outs[0] if outs else None, log=con.print)
    else:
        out = prune_model(rest, outs[0], log=con.print)
    con.print(f"pruned: {out} (sparsity: {out / 'sparsity.json'})")
    return EXIT_OK


def cmd_merge(args) -> int:
    from tuneforge.config.run import Run
    from tuneforge.runner.offline import merge_run

    outs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("out=")]
    if len(outs) != 1:
        raise InputError(["usage: tuneforge merge DIR DIR ... merge=<method> [merge.<knob>=...] [recipe=R data=...] "
                          "out=OUT (run directories, exported models or LoRA adapters of one base)"])
    paths = [o for o in args.overrides if "=" not in o]
    run = Run.compose([o for o in args.overrides if "=" in o and not o.startswith("out=")])
    merge_run(run, paths, Path(outs[0]), log=_console().print)
    return EXIT_OK


def cmd_plot(args) -> int:
    from tuneforge.logging.plots import plot

    opts = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    unknown = sorted(set(opts) - {"out", "metric"})
    if unknown:
        raise InputError([f"unknown option {k}=: tuneforge plot RUN_DIR... | SWEEP_DIR [out=FILE.png] [metric=NAME]"
                          for k in unknown])
    out = plot([Path(o) for o in args.overrides if "=" not in o], Path(opts["out"]) if "out" in opts else None,
               opts.get("metric", "eval_loss"))
    _console().print(f"plot: {out}")
    return EXIT_OK


def cmd_ckpt(args) -> int:
    from tuneforge.runner import checkpoint

    path = Path(args.path)
    if args.action == "convert":
        out = checkpoint.convert(path)
        _console().print(f"universal checkpoint: {out} (resume with any number of ranks / ZeRO stage)")
        return EXIT_OK
    targets = [path] if (path / checkpoint.MARKER).is_file() or path.name.startswith("step_") else checkpoint.complete(path)
    if not targets:
        raise InputError([f"{path}: no committed checkpoint here (a checkpoint directory or a run directory)"])
    con, bad = _console(), []
    for ckpt in targets:
        problems = checkpoint.verify(ckpt)
        con.print(f"[{'red' if problems else 'green'}]{'FAIL' if problems else 'ok'}[/] {ckpt}")
        for p in problems:
            con.print(f"  - {p}")
        bad += problems
    return EXIT_BAD_INPUT if bad else EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge", description="Declarative LLM fine-tuning on DeepSpeed.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run a recipe: tuneforge train [-m] recipe=NAME key=value ...")
    t.add_argument("-m", "--multirun", action="store_true", help="sweep: comma-separated values run every combination")
    t.add_argument("--cfg", "-c", choices=["job", "hydra", "all"], help="print the composed config (job: tuneforge's, "
                   "hydra: the hydra node, all: both) and exit without running")
    t.add_argument("--package", "-p", help="with --cfg: print only this key (e.g. peft, hydra.sweep)")
    t.add_argument("--info", action="store_true", help="print the config search path, the groups and their options "
                   "(user ones marked) and the recipe's defaults tree, and exit")
    s = sub.add_parser("show", help="print the resolved config and the DeepSpeed JSON (loads no model)")
    s.add_argument("--doc", action="store_true", help="explain every key of the selected options")
    pl = sub.add_parser("plan", help="memory per rank (weights, gradients, optimizer, activations, logits, peak) before "
                                     "anything loads; whether it fits plan.gpu_mem x plan.gpus, and the cheapest fix")
    pl.add_argument("--json", action="store_true", help="one JSON object (peak_bytes: the predicted per-rank peak)")
    r = sub.add_parser("recipes", help="list recipes (the shipped ones and those of --config-dir)")
    for sp in (t, s, pl, r):
        sp.add_argument("--config-dir", "-cd", action="append", metavar="DIR",
                        help="a user config directory: recipes DIR/<name>.yaml, options DIR/<group>/<name>.yaml "
                             "(repeatable; the same as hydra.searchpath=[file://DIR])")
    sub.add_parser("eval", help="re-evaluate a finished run: tuneforge eval run_dir=DIR; with lm-eval: "
                                "tuneforge eval run_dir=DIR harness.tasks=[tuneforge_gsm8k_local] [harness.limit=N]")
    sub.add_parser("export", help="run the export stages into DIR/export (default: merged HF model, PEFT adapter): "
                                  "tuneforge export run_dir=DIR [export=[merge,prune]] [export.prune.sparsity=0.3]")
    sub.add_parser("prune", help="prune a finished run's model into DIR/pruned, or a base model into out=DIR: "
                                 "tuneforge prune run_dir=DIR prune=wanda [prune.pattern=2:4]")
    sub.add_parser("merge", help="merge fine-tunes of one base into a Hugging Face model: tuneforge merge DIR DIR ... "
                                 "merge=ties|dare|pcb|lines|task_arithmetic [merge.search=true] out=OUT")
    sub.add_parser("plot", help="runs' loss and metric curves on one figure; for a sweep directory also the metric "
                                "against each swept key: tuneforge plot RUN_DIR... | SWEEP_DIR [out=FILE.png] "
                                "[metric=eval_loss]")
    for sp in sub.choices.values():
        sp.add_argument("overrides", nargs="*", help="recipe=NAME, group=option, group.key=value")
    c = sub.add_parser("ckpt", help="checkpoint tools: tuneforge ckpt verify|convert DIR")
    c.add_argument("action", choices=["verify", "convert"], help="verify: check files against the manifest; "
                   "convert: write DIR/universal for resuming on another number of ranks or ZeRO stage")
    c.add_argument("path", help="a checkpoint directory, or a run directory (all its checkpoints)")
    return p


COMMANDS = {"train": cmd_train, "show": cmd_show, "plan": cmd_plan, "recipes": cmd_recipes, "eval": cmd_eval,
            "export": cmd_export, "ckpt": cmd_ckpt, "prune": cmd_prune, "merge": cmd_merge, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    from rich.markup import escape

    from tuneforge.logging.secrets import redact

    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        if argv is None and (problem := hardware.preload_jemalloc(sys.orig_argv[1:])):  # the command line itself
            raise InputError(problem)
        return COMMANDS[args.command](args)
    except InputError as e:
        _console(stderr=True).print(f"[bold red]error:[/] {escape(redact(e.render()))}")
        return EXIT_BAD_INPUT
    except RunError as e:
        _console(stderr=True).print(f"[bold red]error:[/] {escape(redact(str(e)))}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
