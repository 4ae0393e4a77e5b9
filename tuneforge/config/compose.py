"""Compose a run config with Hydra and validate it against the schemas, reporting every problem at once.

    overrides ──► parse (Hydra grammar) ──► recipe + group choices checked ──► Hydra compose (recipe over
    configs/) ──► each group merged onto its schema ──► key overrides applied one by one ──► specs built
    (range checks) ──► cross-axis checks ──► typed DictConfig, or one InputError listing all problems.

Recipes (recipes/*.yaml) are primary configs whose defaults list starts from `base` (configs/base.yaml).
User config directories (--config-dir DIR, hydra.searchpath=[file://DIR]) add recipes (DIR/*.yaml) and options
(DIR/<group>/<option>.yaml) beside the shipped ones; `hydra.*` overrides are read by config/hydra_node.py.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tuneforge import registry
from tuneforge.config.paths import config_dirs, recipe_home, search_path
from tuneforge.config.schema import EXPORT, GROUPS, PRESET_SCHEMAS, ROOT_KEYS, RootSpec
from tuneforge.config.spec import SpecError
from tuneforge.errors import InputError, did_you_mean

DEFAULT_RECIPE = "quickstart"


def options(group: str, user=()) -> list[str]:
    """A group's options: the shipped ones and those of the user config directories `user`."""
    return sorted({p.stem for d in (config_dirs()[0], *user) for p in (Path(d) / group).glob("*.yaml")})


def recipes(user=()) -> dict[str, str]:
    """Recipe name -> its one-line description (the first line of its header comment); `user`: user config
    directories, whose top-level YAML files are recipes."""
    out = {}
    for p in sorted((p for d in (config_dirs()[1], *user) for p in Path(d).glob("*.yaml")), key=lambda p: p.stem):
        first = next((ln for ln in p.read_text().splitlines() if ln.startswith("#")), "# ")
        out[p.stem] = first.lstrip("# ").strip()
    return out


def schema_for(group: str, name: str) -> type:
    if group in PRESET_SCHEMAS:
        return PRESET_SCHEMAS[group]
    return registry.entry(group, name).config


@dataclass
class _Override:
    text: str
    key: str
    value: object
    kind: str  # "recipe" | "choice" | "key" | "hydra"


def _parse(overrides: list[str]) -> tuple[list[_Override], list[str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    problems, out = [], []
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except Exception as e:  # Hydra's grammar errors are long; keep the first line
            problems.append(f"cannot parse override '{text}': {str(e).splitlines()[0]}")
            continue
        if o.key_or_group.startswith(("hydra.", "hydra/")):
            out.append(_Override(text, o.key_or_group, None, "hydra"))  # checked by hydra_node.read
            continue
        if o.is_sweep_override():
            problems.append(f"'{text}' is a sweep: run it with `tuneforge train -m ...`")
            continue
        if o.is_delete():
            problems.append(f"'{text}': deleting keys is not supported; set the key to null instead")
            continue
        key = o.key_or_group
        head = key.split(".")[0]
        if key == "recipe":
            out.append(_Override(text, key, o.value(), "recipe"))
        elif key in GROUPS or key == EXPORT:
            out.append(_Override(text, key, o.value(), "choice"))
        elif head in GROUPS or head in ROOT_KEYS or head == EXPORT:
            out.append(_Override(text, key, o.value(), "key"))
        else:
            problems.append(f"unknown key '{key}'{did_you_mean(head, (*GROUPS, EXPORT, *ROOT_KEYS, 'recipe', 'hydra'))}"
                            f"; the groups are: {', '.join(GROUPS)}")
    return out, problems


def _hydra_compose(recipe: str, choices: list[str], user=()) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    home = recipe_home(recipe, user)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(home), version_base=None):
        return compose(recipe, overrides=[search_path(home, user), *choices])


def _typed_group(group: str, node, problems: list[str], overridden: bool, own=()):
    """Merge a composed group node onto its schema; every bad key becomes one problem.

    When the command line swapped the group's option (e.g. peft=freeze on a LoRA recipe), the recipe's settings
    for the old option that the new one has no field for are dropped instead of reported -- except `own`, the
    keys the chosen option's file itself sets (a user's option file with a typo is reported)."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig) or name is None:
        problems.append(f"{group}: missing `name` (each configs/{group}/*.yaml must set name: <option>)")
        return None
    try:
        schema = schema_for(group, str(name))
    except KeyError as e:
        problems.append(f"{group}: {e.args[0]}")
        return None
    return _onto(schema, node, group, f" for {group}={name}", problems, drop_unknown=overridden, own=own)


def _onto(schema: type, node, where: str, what: str, problems: list[str], drop_unknown: bool = False, own=()):
    """`node`'s keys merged one by one onto `schema`'s defaults; each bad key is one problem."""
    typed = OmegaConf.structured(schema)
    fields = set(schema.__dataclass_fields__)
    for key in node or {}:
        if key not in fields:
            if drop_unknown and key not in own:
                continue
            problems.append(f"unknown key {where}.{key}{did_you_mean(str(key), fields)}{what}; "
                            f"valid keys: {', '.join(sorted(fields)) or 'none'}")
            continue
        try:
            typed = OmegaConf.merge(typed, {key: node[key]})
        except OmegaConfBaseException as e:
            problems.append(f"{where}.{key}: {_short(e)}")
    return typed


def _option_keys(group: str, option: str, user=()) -> set[str]:
    """The keys configs/<group>/<option>.yaml (or a user directory's) sets."""
    for d in (config_dirs()[0], *user):
        path = Path(d) / group / f"{option}.yaml"
        if path.is_file():
            return {str(k) for k in OmegaConf.load(path) or {}}
    return set()


def _short(e: Exception) -> str:
    msg = str(e).splitlines()[0]
    return re.sub(r"\s+", " ", msg)


def _apply_key(cfg: DictConfig, o: _Override, problems: list[str]) -> None:
    group, _, rest = o.key.partition(".")
    node, parts = cfg, o.key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            hint = f" (a stage's knobs need the stage: export=[...,{part}])" if where == EXPORT else ""
            problems.append(f"unknown key '{o.key}': '{part}' is not in {where}{hint}")
            return
        node = node[part]
    leaf = parts[-1]
    is_dict_field = isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict
    if isinstance(node, DictConfig) and leaf not in node and not is_dict_field:
        choices = [str(k) for k in node]
        problems.append(f"unknown key '{o.key}'{did_you_mean(leaf, choices)}; valid keys here: {', '.join(choices)}")
        return
    try:
        with open_dict(node) if is_dict_field else contextlib.nullcontext():
            OmegaConf.update(cfg, o.key, o.value, merge=True)
    except OmegaConfBaseException as e:
        problems.append(f"{o.key}={o.value!r}: {_short(e)}{_help(cfg, o.key)}")


def _help(cfg: DictConfig, key: str) -> str:
    """' (<what the knob means>)' for a dotted key of a typed group."""
    from tuneforge.config.spec import help_of

    group, _, field_name = key.partition(".")
    node = cfg.get(group) if group in GROUPS else None
    if node is None or "." in field_name:
        return ""
    text = help_of(OmegaConf.get_type(node)).get(field_name, "") if OmegaConf.get_type(node) else ""
    return f" ({key}: {text})" if text else ""


def compose(overrides: list[str]) -> DictConfig:
    """Compose and validate; raise InputError listing every problem (with fixes) before anything loads."""
    return compose_with_specs(overrides)[0]


def compose_with_specs(overrides: list[str]) -> tuple[DictConfig, dict]:
    """(typed config, specs). A bad piece (unknown option, bad key) is reported and left out, so the rest is
    still checked: one run of the command shows every problem."""
    return compose_run(overrides)[:2]


def compose_run(overrides: list[str]) -> tuple[DictConfig, dict, DictConfig | None]:
    """(typed config, specs, {hydra: node} when hydra keys were set, else None): what `Run.compose` holds."""
    from tuneforge.config import hydra_node

    parsed, problems = _parse(list(overrides))
    hyd, found = hydra_node.read([o.text for o in parsed if o.kind == "hydra"], multirun=False)
    problems += found
    user = hyd.user_dirs
    recipe = next((str(o.value) for o in reversed(parsed) if o.kind == "recipe"), DEFAULT_RECIPE)
    known = recipes(user)
    if recipe not in known:
        problems.append(f"unknown recipe '{recipe}'{did_you_mean(recipe, known)}; `tuneforge recipes` lists them")
        raise InputError(problems)
    if "hydra" in (OmegaConf.load(recipe_home(recipe, user) / f"{recipe}.yaml") or {}):
        problems.append(f"recipe '{recipe}' sets `hydra:` keys, which a recipe cannot set: give them on the command "
                        "line (hydra.run.dir=..., hydra.sweep.dir=..., --config-dir DIR)")
    choices, bad_groups, stages = [], set(), None
    for o in (o for o in parsed if o.kind == "choice"):
        if o.key == EXPORT:
            stages = _stage_list(o.value, options(EXPORT), problems)
            if stages is None:
                bad_groups.add(EXPORT)
            else:
                choices.append(f"{EXPORT}=[{','.join(stages)}]")
            continue
        opts = options(o.key, user)
        if str(o.value) in opts:
            choices.append(f"{o.key}={o.value}")
        else:
            bad_groups.add(o.key)
            problems.append(f"unknown option {o.key}={o.value}{did_you_mean(str(o.value), opts)}; "
                            f"options: {', '.join(opts)}")
    try:
        base = _hydra_compose(recipe, choices, user)
        node = hydra_node.compose_node(hyd, recipe)[0] if hyd.overrides else None  # Hydra's defaults otherwise
    except InputError as e:
        raise InputError([*problems, *e.problems]) from None
    except Exception as e:
        raise InputError([*problems, f"recipe '{recipe}' does not compose: {_short(e)}"]) from None

    cfg = OmegaConf.structured(RootSpec)
    OmegaConf.set_struct(cfg, False)
    for key in base:
        if key in GROUPS:
            chosen = next((c.split("=", 1)[1] for c in reversed(choices) if c.startswith(f"{key}=")), None)
            typed = _typed_group(key, base[key], problems, overridden=chosen is not None,
                                 own=_option_keys(key, chosen, user) if chosen else ())
            if typed is None:
                bad_groups.add(key)
            cfg[key] = typed
        elif key == EXPORT:
            cfg[key] = _typed_export(base[key], problems, stages)
        elif key in ROOT_KEYS:
            cfg[key] = base[key]
        else:
            problems.append(f"recipe '{recipe}': unknown top-level key '{key}'"
                            f"{did_you_mean(str(key), (*GROUPS, EXPORT, *ROOT_KEYS))}")
    for g in (*GROUPS, EXPORT):
        if g not in cfg:
            bad_groups.add(g)
            problems.append(f"recipe '{recipe}' selects no {g} option (configs/base.yaml must list every group)")
    cfg.recipe = recipe
    OmegaConf.set_struct(cfg, True)

    for o in (o for o in parsed if o.kind == "key" and o.key.split(".")[0] not in bad_groups):
        _apply_key(cfg, o, problems)
    if "hydra.run.dir" in hyd.given and "trainer" not in bad_groups:
        _run_dir_from_hydra(cfg, str(node.hydra.run.dir), problems)
    n_problems = len(problems)
    specs = build_specs(cfg, problems, skip=bad_groups)
    if EXPORT not in bad_groups:
        export_stages(cfg, problems)
    if not bad_groups and len(problems) == n_problems:
        from tuneforge.config.checks import cross_axis_problems

        problems += cross_axis_problems(specs)
    if problems:
        raise InputError(problems)
    return cfg, specs, node


def _run_dir_from_hydra(cfg: DictConfig, run_dir: str, problems: list[str]) -> None:
    """hydra.run.dir is trainer.output_dir; both given and different is a contradiction."""
    given = cfg.trainer.output_dir
    if given and Path(given).absolute() != Path(run_dir).absolute():
        problems.append(f"hydra.run.dir={run_dir} and trainer.output_dir={given} name two run directories: give one")
    else:
        cfg.trainer.output_dir = run_dir


def build_specs(cfg: DictConfig, problems: list[str] | None = None, skip=()) -> dict:
    """Group name -> spec dataclass instance (runs every range check). Collects problems if a list is given."""
    specs, collect = {}, problems is not None
    for g in (g for g in GROUPS if g not in skip):
        try:
            specs[g] = OmegaConf.to_object(cfg[g])
        except SpecError as e:
            if not collect:
                raise
            problems += [f"{g}.{p}" if re.match(r"^\w+=", p) else f"{g}: {p}" for p in e.problems]
        except OmegaConfBaseException as e:
            if not collect:
                raise
            problems.append(f"{g}: {_short(e)}")
    return specs


def _stage_list(value, known, problems: list[str]) -> list[str] | None:
    """The stage names of an `export=[...]` choice, or None (problems added) if one is unknown or repeated."""
    names = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    bad = [n for n in names if n not in known]
    for n in bad:
        problems.append(f"unknown export stage '{n}'{did_you_mean(n, known)}; stages: {', '.join(known)} "
                        "(export=[merge,prune] runs merge, then prune)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append(f"export=[{','.join(names)}] lists {', '.join(twice)} twice: each stage runs once")
    if not names:
        problems.append("export=[] selects no stage: e.g. export=[merge]")
    return None if bad or twice or not names else names


def _stage_file(name: str):
    """A stage's knobs in configs/export/<name>.yaml, or None when it has no file."""
    path = config_dirs()[0] / EXPORT / f"{name}.yaml"
    return OmegaConf.load(path)[name] if path.is_file() else None


def _stage_defaults(name: str):
    """A stage's default knobs: its configs/export file, or its spec's defaults when it has none."""
    found = _stage_file(name)
    return found if found is not None else OmegaConf.structured(registry.entry(EXPORT, name).config)


def _typed_export(node, problems: list[str], chosen: list[str] | None = None) -> DictConfig:
    """The composed `export` node -- {stage: its knobs merged onto the stage's spec}, in the order the stages
    run. When the command line chose the stages (`chosen`), the recipe's settings of other stages are dropped."""
    out = OmegaConf.create({})
    for name in (str(n) for n in node or {}):
        if chosen is not None and name not in chosen:
            continue
        try:
            schema = registry.entry(EXPORT, name).config
        except KeyError as e:
            problems.append(f"export: {e.args[0]}")
            continue
        if chosen is None and set(_stage_file(name) or {}) - set(node[name] or {}):  # Hydra did not select it
            problems.append(f"export.{name} is set, but {name} is not among the export stages: add it to the "
                            f"recipe's `override /export: [...]` (or export=[...,{name}] on the command line)")
            continue
        out[name] = _onto(schema, node[name], f"export.{name}", "", problems)
    return out


def export_stages(cfg: DictConfig, problems: list[str] | None = None) -> list[tuple[str, object]]:
    """(stage name, spec) for each stage of `tuneforge export`, in order (runs every range check). The first
    stage takes the trained model (its spec's `takes = "trained"`, e.g. merge), every later one a merged model.
    Collects problems if a list is given, else raises InputError."""
    out, found = [], []
    names = [str(n) for n in cfg.get(EXPORT) or {}]
    if not names:
        found.append("export=[] selects no stage: e.g. export=[merge]")
    for i, name in enumerate(names):
        takes = getattr(registry.entry(EXPORT, name).config, "takes", "merged")
        if i == 0 and takes != "trained":
            found.append(f"export=[{','.join(names)}]: {name} works on a merged model; start with a stage that "
                         "takes the trained model, e.g. export=[merge," + ",".join(names) + "]")
        elif i > 0 and takes == "trained":
            found.append(f"export=[{','.join(names)}]: {name} takes the trained model, so it must come first")
        try:
            out.append((name, OmegaConf.to_object(cfg[EXPORT][name])))
        except SpecError as e:
            found += [f"export.{name}.{p}" if re.match(r"^\w+=", p) else f"export.{name}: {p}" for p in e.problems]
    if problems is None and found:
        raise InputError(found)
    if problems is not None:
        problems += found
    return out


def run_export_stages(cfg: DictConfig, overrides: list[str]) -> list[tuple[str, object]]:
    """`export_stages` of a finished run's config with the options of `tuneforge export` applied: export=[stages]
    and export.<stage>.<knob>=value. Anything else is an error (the run itself is fixed)."""
    parsed, problems = _parse(list(overrides))
    for o in parsed:
        if o.kind == "choice" and o.key == EXPORT:
            names = _stage_list(o.value, registry.names(EXPORT), problems)
            if names is not None:
                run = cfg[EXPORT]
                cfg[EXPORT] = _typed_export({n: run[n] if n in run else _stage_defaults(n) for n in names}, problems,
                                            names)
        elif o.kind == "key" and o.key.split(".")[0] == EXPORT:
            _apply_key(cfg, o, problems)
        else:
            problems.append(f"'{o.text}': `tuneforge export` takes run_dir=DIR and export options (export=[...], "
                            "export.<stage>.<knob>=...); the run's other settings are fixed")
    stages = export_stages(cfg, problems)
    if problems:
        raise InputError(problems)
    return stages


def prune_spec_of(cfg: DictConfig, overrides: list[str]):
    """The prune spec of `tuneforge prune run_dir=DIR`: the run's prune option changed by prune=<method> and
    prune.<knob>=value (anything else is an error: the run itself is fixed). prune=none is an error too."""
    parsed, problems = _parse(list(overrides))
    node, chosen = cfg.prune, False
    for o in parsed:
        if o.kind == "choice" and o.key == "prune":
            if str(o.value) in options("prune"):
                node, chosen = OmegaConf.load(config_dirs()[0] / "prune" / f"{o.value}.yaml"), True
            else:
                problems.append(f"unknown option prune={o.value}{did_you_mean(str(o.value), options('prune'))}; "
                                f"options: {', '.join(options('prune'))}")
        elif o.kind != "key" or o.key.split(".")[0] != "prune":
            problems.append(f"'{o.text}': `tuneforge prune run_dir=DIR` takes prune=<method> and prune.<knob>=...; "
                            "the run's other settings are fixed")
    typed = _typed_group("prune", node, problems, overridden=chosen)
    if typed is None:
        raise InputError(problems)
    out = OmegaConf.create({"prune": typed})
    OmegaConf.set_struct(out, True)
    for o in (o for o in parsed if o.kind == "key" and o.key.split(".")[0] == "prune"):
        _apply_key(out, o, problems)
    spec = None
    if not problems:
        try:
            spec = OmegaConf.to_object(out.prune)
        except SpecError as e:
            problems += [f"prune.{p}" if re.match(r"^\w+=", p) else f"prune: {p}" for p in e.problems]
    if spec is not None and spec.name == "none":
        problems.append("no pruning method: choose one, e.g. prune=wanda (options: "
                        f"{', '.join(o for o in options('prune') if o != 'none')})")
    if problems:
        raise InputError(problems)
    return spec


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run was started with (what workers, eval and export read)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError([f"{run_dir} is not a tuneforge run directory (no config.yaml)"])
    raw = OmegaConf.load(path)
    cfg = OmegaConf.structured(RootSpec)
    OmegaConf.set_struct(cfg, False)
    for key in raw:
        cfg[key] = OmegaConf.merge(OmegaConf.structured(schema_for(key, raw[key].name)), raw[key]) if key in GROUPS else raw[key]
    if "prune" not in raw:  # runs from before the prune group were not pruned
        cfg["prune"] = OmegaConf.structured(schema_for("prune", "none"))
    if "merge" not in raw:  # runs from before the merge group: no merge
        cfg["merge"] = OmegaConf.structured(schema_for("merge", "none"))
    if "harness" not in raw:  # runs from before the harness group ran no lm-eval
        cfg["harness"] = OmegaConf.structured(schema_for("harness", "default"))
    problems: list[str] = []  # runs from before export stages existed export as export=[merge] did
    node = raw.get(EXPORT) or {"merge": _stage_defaults("merge")}
    cfg[EXPORT] = _typed_export(node, problems, chosen=[str(n) for n in node])
    if problems:
        raise InputError([f"{path}: {p}" for p in problems])
    OmegaConf.set_struct(cfg, True)
    return cfg


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic-sweeper expansion: `a=1,2 b=x,y` -> the cartesian product, one override list per job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as e:
        raise InputError([f"cannot parse overrides: {_short(e)}"]) from None
    batches = BasicSweeper.split_arguments(parsed, None)
    return [job for batch in batches for job in batch]


def harness_spec_of(cfg: DictConfig, overrides: list[str]):
    """The harness spec of `tuneforge eval run_dir=DIR harness.tasks=[...]`: the run's harness settings changed by
    harness.<knob>=value (anything else is an error: the run itself is fixed). No tasks is an error too."""
    parsed, problems = _parse(list(overrides))
    others = len(problems)
    out = OmegaConf.create({"harness": OmegaConf.merge(OmegaConf.structured(schema_for("harness", "default")),
                                                       cfg.harness)})
    OmegaConf.set_struct(out, True)
    for o in parsed:
        if o.kind == "key" and o.key.split(".")[0] == "harness":
            _apply_key(out, o, problems)
        else:
            problems.append(f"'{o.text}': `tuneforge eval run_dir=DIR` takes harness.<knob>=... (harness.tasks=[...], "
                            "harness.limit=..., ...); the run's other settings are fixed")
            others += 1
    spec = None
    if len(problems) == others:  # the harness keys applied: check their values too
        try:
            spec = OmegaConf.to_object(out.harness)
        except SpecError as e:
            problems += [f"harness.{p}" if re.match(r"^\w+=", p) else f"harness: {p}" for p in e.problems]
    if not out.harness.tasks:
        problems.append("no lm-eval tasks: name them, e.g. harness.tasks=[tuneforge_gsm8k_local]")
    if problems:
        raise InputError(problems)
    return spec
