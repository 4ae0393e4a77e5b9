"""Where things live: `pkg://` references to files shipped inside installed packages, and tuneforge's cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PKG = "pkg://"


def resolve_ref(ref: str) -> Path:
    """`pkg://<package>/<file>` -> the file inside that installed package (not imported); else a local path."""
    if ref.startswith(PKG):
        package, _, rel = ref[len(PKG):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package '{package}' is not installed (needed for {ref})")
        return Path(list(spec.submodule_search_locations)[0]) / rel
    return Path(os.path.expanduser(ref))


def looks_local(ref: str) -> bool:
    """A reference meant as a local file or directory (as opposed to a hub id like org/name)."""
    return ref.startswith((PKG, "/", "./", "../", "~")) or ref.endswith(".gguf") or Path(ref).exists()


def cache_dir() -> Path:
    d = Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge"))
    d.mkdir(parents=True, exist_ok=True)
    return d
