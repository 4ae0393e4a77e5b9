"""The sweep table reads at 80 columns: overrides every job shares are printed once above it, rows show only
what varies."""

from __future__ import annotations

from rich.console import Console

from tuneforge.runner.sweep import _shared_lines, _table

SHARED = ["recipe=quickstart_tiny", "data.path=/home/someone/projects/finetune/data/arithmetic_word_problems.jsonl",
          "trainer.max_steps=200", "trainer.eval_every=50", "model.path=/models/huggingface/SmolLM2-135M-Instruct"]


def _results() -> list[dict]:
    out = []
    for i, (lr, r) in enumerate((("1e-4", "8"), ("1e-4", "16"), ("3e-4", "8"), ("3e-4", "16"))):
        out.append({"job": i, "overrides": [*SHARED[:3], f"optim.lr={lr}", *SHARED[3:], f"peft.r={r}"],
                    "status": "completed" if i != 2 else "failed", "exit_code": 0 if i != 2 else 1,
                    "final_train_loss": 1.2345 + i if i != 2 else None,
                    "eval": {"eval_loss": 1.5 + i, "exact_match": 0.25 * i} if i != 2 else {},
                    "run_dir": f"/very/long/outputs/multirun/2026-12-07_01-00-00/{i}_quickstart-tiny-..."})
    return out


def test_table_fits_80_columns_with_shared_overrides_above():
    con = Console(width=80, record=True, color_system=None)
    results = _results()
    for line in _shared_lines(results):
        con.print(line)
    con.print(_table(results))
    text = con.export_text()
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines) and "…" not in text
    assert text.count("data.path=") == 1 and text.index("every job:") < text.index("overrides")
    rows = [ln for ln in lines if ln.strip()[:1].isdigit()]
    assert len(rows) == 4  # one line per job: nothing wrapped
    for r, row in zip(results, rows):
        lr, rank = r["overrides"][3], r["overrides"][-1]
        assert row.split()[:4] == [str(r["job"]), lr, rank, r["status"]], row
    assert "1.2345" in rows[0] and "-" in rows[2].split()[4:] and "75.0%" in rows[3]


def test_one_job_shows_its_overrides_above_the_table():
    con = Console(width=80, record=True, color_system=None)
    results = _results()[:1]
    for line in _shared_lines(results):
        con.print(line)
    con.print(_table(results))
    text = con.export_text()
    assert "optim.lr=1e-4" in text.split("overrides")[0] and "…" not in text
