"""Imports run downwards (ARCHITECTURE rule 11): the layers and the no-circle contracts in pyproject.toml
([tool.importlinter]), checked by import-linter. Imports inside functions count like module-level ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(package_root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the `tuneforge` package found in package_root, with this checkout's contracts."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # import-linter puts the cwd first
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", str(ROOT / "pyproject.toml")],
                          cwd=package_root, env=env, capture_output=True, text=True, timeout=300)


def test_imports_run_downwards_without_circles():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_upward_import_or_a_circle_breaks_the_contracts(tmp_path):
    """The check can fail: a function-level upward import (models -> runner) and a new circle are reported."""
    shutil.copytree(ROOT / "tuneforge", tmp_path / "tuneforge", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "tuneforge" / "models" / "load.py").open("a") as f:
        f.write("\n\ndef upward():\n    from tuneforge.runner import runner\n\n    return runner\n")
    with (tmp_path / "tuneforge" / "config" / "schema.py").open("a") as f:
        f.write("\n\nfrom tuneforge.config import compose  # noqa\n")  # compose imports schema: a circle
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tuneforge.models is not allowed to import tuneforge.runner" in proc.stdout, proc.stdout
    assert "No cycles are allowed in tuneforge.config" in proc.stdout, proc.stdout
