"""Where configs are found: the shipped configs/ and recipes/ (in the wheel or the checkout), and the Hydra
search path that adds user config directories (--config-dir, hydra.searchpath) to them."""

from __future__ import annotations

from pathlib import Path


def config_dirs() -> tuple[Path, Path]:
    """(configs/, recipes/): inside the installed wheel, else at the top of the source checkout."""
    pkg = Path(__file__).resolve().parents[1]
    for configs, recipes in ((pkg / "_configs", pkg / "_recipes"), (pkg.parent / "configs", pkg.parent / "recipes")):
        if configs.is_dir() and recipes.is_dir():
            return configs, recipes
    raise RuntimeError(f"tuneforge configs not found next to {pkg}: reinstall tuneforge")


def recipe_home(recipe: str, user=()) -> Path:
    """The directory holding recipe.yaml: a user directory or the shipped recipes/. Hydra finds a primary config
    only in its primary directory; everything else (inherited recipes, base, group options) on the search path."""
    return next((Path(d) for d in user if (Path(d) / f"{recipe}.yaml").is_file()), config_dirs()[1])


def search_path(primary: Path, user=()) -> str:
    """The hydra.searchpath override: every directory but `primary` (shipped recipes, configs, user dirs)."""
    configs, recipes_dir = config_dirs()
    dirs = [d for d in (recipes_dir, configs, *map(Path, user)) if d != primary]
    return f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"
