"""Configs and recipes are found from an installed wheel, not only from the source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from tests.conftest import ROOT


def test_configs_found_from_wheel(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tuneforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tuneforge/_configs/base.yaml" in names and "tuneforge/_recipes/quickstart.yaml" in names
    assert "tuneforge/data/examples/alpaca.jsonl" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import tuneforge, tuneforge.config.compose as c; print(tuneforge.__file__); print(c.config_dirs()[0]);"
            "from tuneforge.cli import main; raise SystemExit(main(['show', 'recipe=lora_tiny']))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith(str(site)) and second == str(site / "tuneforge" / "_configs")
    assert "recipe: lora_tiny" in proc.stdout
