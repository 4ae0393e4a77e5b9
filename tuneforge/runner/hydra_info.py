"""`tuneforge train --cfg job|hydra|all [-p KEY]` and `tuneforge train --info`: Hydra's introspection flags.

--cfg prints the composed config without running (job: tuneforge's resolved config, the one a run writes to
config.yaml; hydra: the `hydra` node; all: both); with -m, each job's config. --info prints where configs are
searched, every group's options (user ones marked), the recipes, the launchers and sweepers, and the recipe's
defaults tree as Hydra composes it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from tuneforge.config import hydra_node
from tuneforge.config.compose import DEFAULT_RECIPE, EXPORT, GROUPS, expand_sweep, options, recipes
from tuneforge.config.paths import config_dirs, recipe_home, search_path
from tuneforge.config.run import Run
from tuneforge.errors import EXIT_OK, InputError, did_you_mean
from tuneforge.logging import secrets


def _hydra(overrides: list[str], multirun: bool, job_name: str) -> DictConfig:
    args, problems = hydra_node.read(hydra_node.split(overrides)[0], multirun)
    if problems:
        raise InputError(problems)
    return hydra_node.compose_node(args, job_name)[0]


def _job(overrides: list[str]) -> DictConfig:
    run = Run.compose(overrides)
    secrets.absorb(run.cfg)  # a token given on the command line is not printed
    return run.cfg


def _select(cfg: DictConfig, package: str | None) -> object:
    if not package:
        return cfg
    found = OmegaConf.select(cfg, package, default=None)
    if found is None:
        keys = [str(k) for k in cfg]
        raise InputError([f"--package {package}: no such key{did_you_mean(package.split('.')[0], keys)}; "
                          f"top-level keys: {', '.join(keys)}"])
    return found


def _yaml(node) -> str:
    return OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else f"{node}\n"


def print_cfg(con, overrides: list[str], which: str, package: str | None, multirun: bool) -> int:
    """Print the config(s) a `tuneforge train [-m]` with these overrides would run; start nothing."""
    hydra_overrides, rest = hydra_node.split(overrides)
    searchpath = [o for o in hydra_overrides if o.startswith("hydra.searchpath")]
    jobs = expand_sweep(rest) if multirun else [rest]
    job_cfgs = [_job([*(searchpath if multirun else hydra_overrides), *job]) for job in jobs] if which != "hydra" else []
    names = {str(c.recipe) for c in job_cfgs} or {str(next((o.split("=", 1)[1] for o in rest
                                                            if o.startswith("recipe=")), DEFAULT_RECIPE))}
    node = _hydra(overrides, multirun, names.pop() if len(names) == 1 else "tuneforge") if which != "job" else None
    if which == "hydra":
        con.out(_yaml(_select(node, package)), end="", highlight=False)
        return EXIT_OK
    for i, (job, cfg) in enumerate(zip(jobs, job_cfgs)):
        if multirun:
            con.out(f"# job {i}: {' '.join(job) or '(defaults)'}", highlight=False)
        full = OmegaConf.merge(OmegaConf.to_container(cfg), node) if which == "all" else cfg
        con.out(_yaml(_select(full, package)), end="", highlight=False)
    return EXIT_OK


def print_info(con, overrides: list[str], multirun: bool = False) -> int:
    """Search path, groups and options, recipes, launchers/sweepers, and the recipe's defaults tree."""
    from hydra.types import RunMode

    from tuneforge.runner.sweep import SWEEPERS

    hydra_overrides, rest = hydra_node.split(overrides)
    args, problems = hydra_node.read(hydra_overrides, multirun)
    if problems:
        raise InputError(problems)
    recipe = next((o.split("=", 1)[1] for o in reversed(rest) if o.startswith("recipe=")), DEFAULT_RECIPE)
    known = recipes(args.user_dirs)
    if recipe not in known:
        raise InputError([f"unknown recipe '{recipe}'{did_you_mean(recipe, known)}; `tuneforge recipes` lists them"])
    node, loader = hydra_node.compose_node(args, recipe, recipe)
    labels = {str(d): "user (--config-dir / hydra.searchpath)" for d in args.user_dirs}
    labels |= {str(config_dirs()[1]): "tuneforge recipes", str(config_dirs()[0]): "tuneforge configs (groups)"}
    con.rule("Config search path")
    for src in node.hydra.runtime.config_sources:
        where = labels.get(src.path, src.provider)
        con.print(f"  {where:<40} {src.schema}://{src.path}", highlight=False)
    con.rule("Config groups (tuneforge train group=option; * = from a user directory)")
    shipped = config_dirs()[0]
    for group in (*GROUPS, EXPORT):
        opts = [o + ("" if (shipped / group / f"{o}.yaml").is_file() else "*") for o in options(group, args.user_dirs)]
        con.print(f"  [bold]{group}[/]: {', '.join(opts)}", highlight=False)
    con.print(f"  [bold]hydra/launcher[/] (-m): {', '.join(loader.get_group_options('hydra/launcher'))}",
              highlight=False)
    con.print(f"  [bold]hydra/sweeper[/] (-m): {', '.join(SWEEPERS)}", highlight=False)
    con.rule("Recipes (tuneforge train recipe=NAME; * = from a user directory)")
    ships = {p.stem for p in config_dirs()[1].glob("*.yaml")}
    con.print("  " + ", ".join(n + ("" if n in ships else "*") for n in known), highlight=False)
    con.rule(f"Defaults tree of recipe={recipe}")
    choices = [o for o in rest if "=" in o and o.split("=", 1)[0] in (*GROUPS, EXPORT)]
    sp = search_path(recipe_home(recipe, args.user_dirs), args.user_dirs)
    tree = loader.compute_defaults_list(recipe, [sp, *choices], RunMode.RUN).defaults_tree
    for line in _tree_lines(tree):
        con.print(line, highlight=False, markup=False)
    return EXIT_OK


def _tree_lines(tree, indent: int = 0) -> list[str]:
    """Hydra's defaults tree (the recipe, what it inherits, each group's option), one line per node."""
    from hydra._internal.defaults_list import DefaultsTreeNode
    from hydra.core.default_element import GroupDefault

    def text(node) -> str:
        if isinstance(node, GroupDefault):
            return f"{node.get_override_key()}: {node.get_name()}"
        return node.get_config_path()

    pad = "  " * indent
    if not isinstance(tree, DefaultsTreeNode):
        return [pad + text(tree)]
    children = tree.children or []
    out = [pad + text(tree.node) + (":" if children else "")]
    for child in children:
        out += _tree_lines(child, indent + 1)
    return out
