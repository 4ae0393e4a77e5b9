"""SwitchLoRA's defining properties on real DeepSpeed engines (ZeRO-0 one rank, ZeRO-2 two ranks, gloo on CPU):

- the number of vectors switched at each step is the paper's decaying schedule, r * 0.3^((t+1)/D) / interval_0
  per matrix and layer, stochastically rounded (recomputed here from the formula);
- exactly the switched vectors change, and every layer's function W0 + s B A is unchanged at the switch;
- exactly the optimizer-state rows of the switched vectors' counterparts are zeroed (Adam exp_avg and exp_avg_sq;
  the step count is kept); every other element of the optimizer state is bitwise unchanged;
- a frozen counterpart does not move during its freeze.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.contracts.adapter_probe import probe
from tuneforge.peft.switchlora.apply import draw_count, generator

R, INTERVAL = 4, 1.5
BASE = ["recipe=quickstart_tiny", "peft=switchlora", f"peft.r={R}", f"peft.interval={INTERVAL}", "peft.freeze_steps=1",
        "peft.descent_steps=4", "trainer.max_steps=4", "trainer.micro_batch_size=2", "trainer.grad_accum=1",
        "trainer.eval_at_start=false", "data.n_eval=2", "trainer.max_new_tokens=2", "trainer.seed=0"]


def modules(rec) -> list[str]:
    return [n[: -len(".lora_A")] for n in rec["before"] if n.endswith(".lora_A")]  # the method's layer order


def check(records):
    total = 0
    for rec in records:
        t = rec["step"]
        want_each = R * 0.3 ** ((t + 1) / 4) / INTERVAL  # the paper's schedule, D = descent_steps = 4
        for i, m in enumerate(modules(rec)):
            g = generator(0, t, i)  # the draws a run with seed 0 makes: n_A then n_B
            n_a, n_b = draw_count(want_each, g), draw_count(want_each, g)
            assert math.floor(want_each) <= n_a <= math.ceil(want_each)
            a0, a1 = rec["before"][f"{m}.lora_A"], rec["after"][f"{m}.lora_A"]
            b0, b1 = rec["before"][f"{m}.lora_B"], rec["after"][f"{m}.lora_B"]
            rows = [j for j in range(R) if not torch.equal(a0[j], a1[j])]
            cols = [j for j in range(R) if not torch.equal(b0[:, j], b1[:, j])]
            assert (len(rows), len(cols)) == (n_a, n_b), (t, m, rows, cols, n_a, n_b)
            total += len(rows) + len(cols)
            w0, w1 = rec["before"][f"{m}.base.weight"], rec["after"][f"{m}.base.weight"]
            s = 1.0 / R
            torch.testing.assert_close(w1 + s * b1 @ a1, w0 + s * b0 @ a0, rtol=0, atol=2e-6)
            assert torch.equal(w0, w1) == (not rows and not cols)
            for name, reset in ((f"{m}.lora_A", (cols, slice(None))), (f"{m}.lora_B", (slice(None), rows))):
                before, after = rec["state_before"][name], rec["state_after"][name]
                if before is None:  # step 0: Adam has no state yet
                    continue
                assert after["step"] == before["step"]
                for key in ("exp_avg", "exp_avg_sq"):
                    x0, x1 = before[key].view(a0.shape if name.endswith("A") else b0.shape), after[key].view_as(
                        a0 if name.endswith("A") else b0)
                    keep = torch.ones_like(x0, dtype=torch.bool)
                    keep[reset] = False
                    assert torch.equal(x0[keep], x1[keep]), (t, name, key)
                    assert not x1[~keep].any(), (t, name, key)
                    assert (~keep).any() == bool(rows if name.endswith("B") else cols)
        assert rec["method"]["switched"] == total
    for rec, nxt in zip(records, records[1:]):  # counterparts frozen at step t do not move in its optimizer step
        for m in modules(rec):
            a0, a1 = rec["before"][f"{m}.lora_A"], rec["after"][f"{m}.lora_A"]
            b0, b1 = rec["before"][f"{m}.lora_B"], rec["after"][f"{m}.lora_B"]
            for j in range(R):
                if not torch.equal(a0[j], a1[j]):
                    assert torch.equal(nxt["before"][f"{m}.lora_B"][:, j], b1[:, j])
                if not torch.equal(b0[:, j], b1[:, j]):
                    assert torch.equal(nxt["before"][f"{m}.lora_A"][j], a1[j])
    assert total > 0 and records[-1]["descent"] == 4


@pytest.mark.parametrize("nproc,zero", [(1, "zero0"), (2, "zero2")])
def test_switches_follow_schedule_and_reset_only_switched_rows(tmp_path, nproc, zero):
    check(probe(tmp_path, nproc, [*BASE, f"zero={zero}"]))
