"""The golden runs: the first STEPS training losses of each tiny recipe, pinned in tests/golden/<recipe>.json so
that any change in numerics shows in review (ARCHITECTURE rule 8).

One definition serves both sides: scripts/regen_golden.py runs ARGS[recipe] through the real CLI and writes the
file; the tests that already run the recipe (the recipe walk, the LISA and QLoRA contracts) run exactly
ARGS[recipe] and compare with `check`. Every entry pins CPU threads, so the numbers do not depend on the number
of cores of the machine (two threads per rank move full_tiny_zero3 by 2e-6). The JSON files are generated:
never edit them by hand.

Reproducibility, measured on an AMD EPYC (AVX512): two regenerations give bitwise equal files. The same machine
restricted to AVX2 or to no SIMD (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) moves the
curves by up to 1.5e-6, 5.7e-6 for lisa_tiny and 8.6e-6 for corda_kpm_tiny (its SVD): ATOL holds across
instruction sets, with little room for corda_kpm_tiny; regenerate on the machine that runs the suite."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config.compose import recipes

STEPS = 6
ATOL = 1e-5
DIR = Path(__file__).resolve().parent
PINNED = [f"trainer.max_steps={STEPS}", "trainer.threads=1"]
WALK = ["trainer.eval_at_start=false", *PINNED]  # the recipe walk (tests/integration/test_recipe_walk.py)

# tests/contracts/test_lisa.py, test_lora_variants.py and tests/unit/precision/test_coat.py run these with their
# own settings
OWN = {
    "lisa_tiny": ["recipe=lisa_tiny", *WALK, "data.n_eval=2"],  # exports every trained layer (2 ranks, ZeRO-3)
    "qlora_tiny": ["recipe=qlora_tiny", *PINNED, "trainer.save_every=0", "trainer.eval_at_start=true"],
    "int8_tiny": ["recipe=int8_tiny", *PINNED, "trainer.save_every=0", "trainer.eval_at_start=true"],
    "coat_tiny": ["recipe=coat_tiny", *WALK, "trainer.save_every=2", "data.n_eval=2"],  # resumed from step 4
}
# every tiny twin but quickstart_tiny (the base that other tests run with their own overrides; its method,
# LoRA, is pinned by lora_tiny) and the merge recipes (merge_*: they train nothing)
TINY = sorted(r for r in recipes() if (r.endswith("_tiny") or r == "full_tiny_zero3") and r != "quickstart_tiny"
              and not r.startswith("merge_"))
ARGS: dict[str, list[str]] = {r: OWN.get(r, [f"recipe={r}", *WALK]) for r in TINY}


def path(recipe: str) -> Path:
    return DIR / f"{recipe}.json"


def pinned(recipe: str) -> list[float]:
    return json.loads(path(recipe).read_text())["losses"]


def max_diff(a: list[float], b: list[float]) -> float:
    """Largest absolute difference; inf for different lengths or a NaN."""
    if len(a) != len(b):
        return float("inf")
    return max((d if d == d else float("inf") for d in (abs(x - y) for x, y in zip(a, b))), default=0.0)


def check(recipe: str, losses: list[float]) -> None:
    """The run's losses equal the pinned ones within ATOL (the run must have used exactly ARGS[recipe])."""
    regen = f"run `python scripts/regen_golden.py {recipe}`"
    assert path(recipe).is_file(), f"{recipe}: no pinned losses in tests/golden/: {regen}"
    data = json.loads(path(recipe).read_text())
    assert data["args"] == ARGS[recipe], f"{recipe}: pinned with {data['args']}, now run with {ARGS[recipe]}: {regen}"
    diff = max_diff(losses, data["losses"])
    assert diff <= ATOL, (f"{recipe}: losses {losses}\ndiffer from the pinned {data['losses']} ({path(recipe).name}, "
                          f"max |diff| {diff:.2e} > {ATOL}). If the change is intended, {regen} and say in the "
                          "commit message why the numbers changed.")
