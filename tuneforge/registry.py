"""One name everywhere: `configs/<group>/<name>.yaml` <-> `@register(group, name, config=Spec)` <-> `cfg.<group>.name`.

Builders register themselves with the spec dataclass that configures them. The spec is also stored in Hydra's
ConfigStore under `schema/<group>/<name>` so Hydra-aware tools can see every schema.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

# Packages whose modules register builders. Importing them is cheap: heavy libraries load inside builders.
PLUGIN_PACKAGES = (
    "tuneforge.data",
    "tuneforge.selection",
    "tuneforge.peft",
    "tuneforge.quant",
    "tuneforge.prune",
    "tuneforge.precision",
    "tuneforge.optim",
    "tuneforge.distributed",
    "tuneforge.export",
    "tuneforge.merge",
)


@dataclass(frozen=True)
class Entry:
    group: str
    name: str
    config: type
    builder: Any


_REGISTRY: dict[str, dict[str, Entry]] = {}
_loaded = False


def register(group: str, name: str, config: type):
    """Decorator: register `builder` (a class or function) as option `name` of config group `group`."""

    def deco(builder):
        existing = _REGISTRY.setdefault(group, {}).get(name)
        if existing is not None and existing.builder is not builder:
            raise RuntimeError(f"{group}/{name} registered twice ({existing.builder} and {builder})")
        _REGISTRY[group][name] = Entry(group, name, config, builder)
        ConfigStore.instance().store(group=f"schema/{group}", name=name, node=config)
        return builder

    return deco


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    for pkg_name in PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            importlib.import_module(mod.name)
    _loaded = True


def groups() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def names(group: str) -> list[str]:
    load_plugins()
    return sorted(_REGISTRY.get(group, {}))


def entry(group: str, name: str) -> Entry:
    load_plugins()
    try:
        return _REGISTRY[group][name]
    except KeyError:
        from tuneforge.errors import did_you_mean

        raise KeyError(f"no {group} named '{name}'{did_you_mean(name, names(group))}") from None


def build(group: str, spec, *args, **kwargs):
    """Instantiate the builder registered for `spec.name` in `group`."""
    return entry(group, spec.name).builder(spec, *args, **kwargs)
