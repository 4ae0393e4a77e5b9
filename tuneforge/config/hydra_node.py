"""Hydra's conventions on tuneforge's command line: the `hydra` node and user config directories.

    hydra.run.dir=DIR          where a run's outputs go (the same as trainer.output_dir)
    hydra.sweep.dir=DIR        where a sweep's outputs go (the same as trainer.output_dir on `train -m`)
    hydra.sweep.subdir=PATTERN a sweep job's directory under hydra.sweep.dir (default: <job num>_<swept values>)
    hydra.job.name=NAME        the job's name (default: the recipe): outputs/<name>/<time>, the Slurm job name
    hydra.searchpath=[file://DIR,...], --config-dir DIR   user recipes (DIR/*.yaml) and options (DIR/<group>/*.yaml)
    hydra/launcher=NAME, hydra.launcher.<knob>=...       a Hydra launcher plugin for `train -m` (basic: tuneforge's)
    hydra/sweeper=NAME, hydra.sweeper.<knob>=...         a sweeper for `train -m` (basic: the cartesian product)

The node is composed by Hydra itself (its schema, its defaults, the launcher plugins' own schemas), with
tuneforge's defaults for the directories. Other `hydra.*` keys are refused with the list of the supported ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tuneforge.config.paths import config_dirs, recipe_home, search_path
from tuneforge.errors import InputError, did_you_mean
from tuneforge.logging import secrets

SETTABLE = {
    "hydra.run.dir": "a single run's directory (the same as trainer.output_dir)",
    "hydra.sweep.dir": "a sweep's directory (`train -m`; the same as trainer.output_dir there)",
    "hydra.sweep.subdir": "a sweep job's directory under hydra.sweep.dir, e.g. ${hydra.job.num}",
    "hydra.job.name": "the job's name: outputs/<name>/<time> and the launcher's (Slurm) job name",
    "hydra.searchpath": "user config directories: [file://DIR,...] (like --config-dir DIR)",
}
CHOICES = ("hydra/launcher", "hydra/sweeper")
PLUGIN_KNOBS = ("hydra.launcher.", "hydra.sweeper.")
SWEEP_ONLY = ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra/launcher", "hydra/sweeper")
BASIC = "basic"
# tuneforge's defaults: a run in outputs/<recipe>/<time>, a sweep in outputs/multirun/<time>, a job in <num>_<values>
DEFAULTS = ["hydra.run.dir=outputs/${hydra.job.name}/${now:%Y-%m-%d_%H-%M-%S}",
            "hydra.sweep.dir=outputs/multirun/${now:%Y-%m-%d_%H-%M-%S}", "hydra.sweep.subdir=${tuneforge_subdir:}",
            "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def identity(job: list[str]) -> list[str]:
    """A job's overrides without the ones that only say how to run it (resume, output dir)."""
    return [o for o in job if not o.startswith(("trainer.resume=", "trainer.output_dir="))]


def slug(overrides: list[str]) -> str:
    """A job's directory name from its swept values (secrets masked)."""
    s = "_".join(o.split("=", 1)[-1] if "=" in o else o for o in identity(redacted(overrides)))
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", s)[:60].strip("-") or "job"


def redacted(overrides) -> list[str]:
    return [secrets.redact(str(o)) for o in overrides]


def _subdir(*, _root_) -> str:
    """${tuneforge_subdir:}: a sweep job's default directory name, <job num>_<its swept values>."""
    return f"{_root_.hydra.job.num}_{slug(list(_root_.hydra.overrides.task))}"


OmegaConf.register_new_resolver("tuneforge_subdir", _subdir, replace=True)


@dataclass
class HydraArgs:
    """The `hydra` overrides of one command line, checked."""

    overrides: list[str] = field(default_factory=list)  # composed into the node by Hydra
    given: set[str] = field(default_factory=set)  # keys the user set (hydra.run.dir, hydra/launcher, ...)
    user_dirs: list[Path] = field(default_factory=list)  # --config-dir / hydra.searchpath, in order
    launcher: str = BASIC
    sweeper: str = BASIC
    sweeper_overrides: list[str] = field(default_factory=list)  # hydra/sweeper=..., hydra.sweeper.* (the sweeper's)


def _key(text: str) -> str | None:
    """The key (or group) an override sets when it is a `hydra` one, else None."""
    m = re.match(r"^[~+]{0,2}(hydra[./][^=~]*)", text)
    return m.group(1) if m else None


def split(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(hydra overrides, the others), in their order."""
    ours = [o for o in overrides if _key(o)]
    return ours, [o for o in overrides if not _key(o)]


def read(overrides: list[str], multirun: bool) -> tuple[HydraArgs, list[str]]:
    """Check `hydra` overrides (keys, sweeps, the run/sweep mode) and sort them; problems with their fix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, problems, parser = HydraArgs(), [], OverridesParser.create()
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except Exception as e:
            problems.append(f"cannot parse override '{text}': {str(e).splitlines()[0]}")
            continue
        key = o.key_or_group
        if o.is_sweep_override() or o.is_delete() or o.is_add() or o.is_force_add():
            problems.append(f"'{text}': set hydra keys plainly (key=value), once for the whole command")
        elif key not in SETTABLE and key not in CHOICES and not key.startswith(PLUGIN_KNOBS):
            problems.append(f"unsupported hydra key '{key}'{did_you_mean(key, (*SETTABLE, *CHOICES))}; "
                            f"tuneforge honours {', '.join(SETTABLE)}, {', '.join(CHOICES)} and the launcher's "
                            "and sweeper's knobs (hydra.launcher.<knob>, hydra.sweeper.<knob>)")
        elif not multirun and (key in SWEEP_ONLY or key.startswith(PLUGIN_KNOBS)):
            problems.append(f"'{text}' applies to sweeps (`tuneforge train -m ...`)"
                            + ("; a single run's directory is hydra.run.dir" if key.startswith("hydra.sweep.") else ""))
        elif multirun and key == "hydra.run.dir":
            problems.append(f"'{text}': a sweep's outputs go to hydra.sweep.dir (each job in hydra.sweep.subdir)")
        elif key == "hydra.searchpath":
            args.user_dirs += _dirs(o.value(), problems)
        elif key == "hydra/sweeper" or key.startswith("hydra.sweeper."):
            args.sweeper = str(o.value()) if key == "hydra/sweeper" else args.sweeper
            args.sweeper_overrides.append(text)
        else:
            args.launcher = str(o.value()) if key == "hydra/launcher" else args.launcher
            args.overrides.append(text)
        args.given.add(key)
    for d in args.user_dirs:
        problems += user_dir_problems(d)
    return args, problems


def _dirs(value, problems: list[str]) -> list[Path]:
    out = []
    for entry in value if isinstance(value, list) else [value]:
        path = str(entry)
        if path.startswith("pkg://"):
            problems.append(f"hydra.searchpath={path}: tuneforge reads user configs from directories (file://DIR)")
            continue
        d = Path(path.removeprefix("file://")).expanduser().absolute()
        if d.is_dir():
            out.append(d)
        else:
            problems.append(f"config directory {d} (--config-dir / hydra.searchpath) does not exist")
    return out


def user_dir_problems(d: Path) -> list[str]:
    """A user directory's files that would shadow a shipped recipe or option (Hydra would silently pick one)."""
    configs, recipes_dir = config_dirs()
    shipped = {p.stem for p in (*recipes_dir.glob("*.yaml"), *configs.glob("*.yaml"))}
    problems = [f"{p}: a shipped recipe has this name; rename it (a recipe inherits a shipped one by listing it in "
                f"its defaults: `- {p.stem}`)" for p in sorted(d.glob("*.yaml")) if p.stem in shipped]
    for p in sorted(d.glob("*/*.yaml")):
        if (configs / p.parent.name / p.name).is_file():
            problems.append(f"{p}: shadows the shipped option {p.parent.name}={p.stem}; give it another name "
                            f"(e.g. my_{p.stem}) and select it with {p.parent.name}=my_{p.stem}")
    if (d / "recipes").is_dir():
        problems.append(f"{d / 'recipes'}: a user config directory holds recipes at its top level (DIR/<recipe>.yaml)"
                        " and options in DIR/<group>/<option>.yaml; move the recipes up")
    return problems


def compose_node(args: HydraArgs, job_name: str, recipe: str | None = None) -> tuple[DictConfig, object]:
    """(the composed `hydra` node's config {hydra: ...}, Hydra's config loader, whose primary directory is
    `recipe`'s): Hydra's schema and defaults, tuneforge's directory defaults, the user's overrides. Unknown
    launcher options and knobs: InputError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra


    home = recipe_home(recipe, args.user_dirs) if recipe else config_dirs()[1]
    sp = search_path(home, args.user_dirs)
    name = [] if "hydra.job.name" in args.given else [f"hydra.job.name={job_name}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(home), version_base=None):
        loader = GlobalHydra.instance().hydra.config_loader
        launchers = loader.get_group_options("hydra/launcher")
        if args.launcher not in launchers:
            raise InputError([f"unknown launcher hydra/launcher={args.launcher}{did_you_mean(args.launcher, launchers)}"
                              f"; installed: {', '.join(launchers)}" + _install_hint(args.launcher)])
        try:
            cfg = compose(None, overrides=[sp, *DEFAULTS, *name, *args.overrides], return_hydra_config=True)
        except Exception as e:
            raise InputError(_knob_problems(compose, sp, args) or [f"hydra overrides: {str(e).splitlines()[0]}"]) from None
    return cfg, loader


def _install_hint(name: str) -> str:
    return " (hydra/launcher=submitit_local|submitit_slurm: pip install 'tuneforge[submitit]')" if "submitit" in name else ""


def _knob_problems(compose, sp: str, args: HydraArgs) -> list[str]:
    """One problem per hydra.launcher.<knob> the chosen launcher does not have, with did-you-mean."""
    plain = [o for o in args.overrides if not o.startswith("hydra.launcher.")]
    try:
        node = compose(None, overrides=[sp, *DEFAULTS, *plain], return_hydra_config=True).hydra.launcher
    except Exception:
        return []
    keys = [str(k) for k in node if not str(k).startswith("_")]
    out = []
    for o in args.overrides:
        knob = o.split("=", 1)[0].removeprefix("hydra.launcher.").split(".")[0]
        if o.startswith("hydra.launcher.") and knob not in keys:
            out.append(f"unknown knob hydra.launcher.{knob}{did_you_mean(knob, keys)} of hydra/launcher={args.launcher}"
                       f"; its knobs: {', '.join(keys)}")
    return out


def job_node(master: DictConfig, overrides: list[str], num: int) -> DictConfig:
    """A sweep job's config {hydra: ...}: the sweep's node (Hydra's typed HydraConf) with the job's overrides,
    number and override dirname."""
    import copy

    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict, read_write

    cfg = copy.deepcopy(master)
    OmegaConf.copy_cache(from_config=master, to_config=cfg)  # ${now:} as the sweep resolved it
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        job, od = cfg.hydra.job, cfg.hydra.job.config.override_dirname
        cfg.hydra.overrides.task = redacted(overrides)  # pickled and shown by launchers: no secret in it
        job.num = num
        job.override_dirname = get_overrides_dirname(OverridesParser.create().parse_overrides(list(overrides)),
                                                     list(od.exclude_keys), od.item_sep, od.kv_sep)
    return cfg


def job_dir(master: DictConfig, overrides: list[str], num: int) -> Path:
    """hydra.sweep.dir/hydra.sweep.subdir of sweep job `num`."""
    node = job_node(master, overrides, num).hydra
    return Path(str(node.sweep.dir)).absolute() / str(node.sweep.subdir)
