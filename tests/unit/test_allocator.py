"""The CLI restarts itself on jemalloc where it is installed (tuneforge/hardware.py: glibc keeps freed activations
resident). The restart is a real os.execve of a real interpreter; the allocator is read from the process's maps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tuneforge import hardware

# What a command line does first (tuneforge/cli.py main), then what the restarted process runs on.
PROBE = ("import sys; from tuneforge import hardware; problem = hardware.preload_jemalloc(sys.orig_argv[1:]); "
         "print(hardware.allocator(), problem)")


def probe(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("TUNEFORGE_ALLOCATOR", "TUNEFORGE_PRELOADED", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_invalid_setting_is_named():
    assert probe(TUNEFORGE_ALLOCATOR="tcmalloc") == ("system TUNEFORGE_ALLOCATOR='tcmalloc': use one of auto, "
                                                     "jemalloc, system")


def test_system_never_restarts():
    assert probe(TUNEFORGE_ALLOCATOR="system") == "system None"


def test_auto_restarts_on_jemalloc_where_installed():
    if hardware.jemalloc_library() is None:
        assert probe() == "system None"  # nothing to preload: the command runs as it is
        assert "apt install libjemalloc2" in probe(TUNEFORGE_ALLOCATOR="jemalloc")
        pytest.skip("jemalloc is not installed here (apt install libjemalloc2): the restart itself is untested")
    assert probe() == "jemalloc None"
    assert probe(TUNEFORGE_ALLOCATOR="jemalloc") == "jemalloc None"
