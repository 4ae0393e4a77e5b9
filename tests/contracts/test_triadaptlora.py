"""TriAdaptLoRA's defining properties on a real DeepSpeed engine (ZeRO-0, gloo on CPU):

- at each decision the modules that grow are exactly those whose normalized importance reaches the threshold,
  i.e. the most important ones first (tau falls from 1), and the reported importance is ||s B A||_F / sqrt(numel);
- optimizer state stays consistent: a grown row's Adam moments are zero, every other element is unchanged; rows
  beyond a module's rank never move (their B columns stay exactly zero);
- ranks are restored from the method state (resume).
"""

from __future__ import annotations

import math

import torch

from tests.contracts.adapter_probe import probe
from tests.contracts.test_peft_family import Row, make

R0, RMAX = 1, 3
BASE = ["recipe=quickstart_tiny", "peft=triadaptlora", f"peft.r_init={R0}", f"peft.r_max={RMAX}", "peft.alpha=2",
        "peft.grow_start=1", "peft.grow_every=1", "peft.grow_until=1.0", "trainer.max_steps=5",
        "trainer.micro_batch_size=2", "trainer.grad_accum=1", "trainer.eval_at_start=false", "data.n_eval=2",
        "trainer.max_new_tokens=2", "optim.lr=1e-2"]


def test_growth_follows_importance_and_state_stays_consistent(tmp_path):
    records = probe(tmp_path, 1, [*BASE, "zero=zero0"])
    ranks = {n: R0 for n in records[0]["method"]["ranks"]}
    decisions = selective = 0
    for rec in records:
        last = rec["last"]
        if last.get("step") != rec["step"]:
            assert rec["method"]["ranks"] == ranks
            continue
        decisions += 1
        scores, tau, grew = last["scores"], last["tau"], set(last["grew"])
        top = max(scores.values())
        assert math.isclose(tau, 1 - (rec["step"] - 1) / 4)  # linear from 1 at grow_start to 0 at the end
        for n, sc in scores.items():  # importance recomputed from the weights before the decision
            a, b = rec["before"][f"{n}.lora_A"][: ranks[n]], rec["before"][f"{n}.lora_B"][:, : ranks[n]]
            assert math.isclose(sc, (2 / R0 * b @ a).norm().item() / math.sqrt(b.shape[0] * a.shape[1]), rel_tol=1e-4)
        assert grew == {n for n, sc in scores.items() if sc / top >= tau and ranks[n] < RMAX}
        selective += bool(grew) and grew != {n for n in scores if ranks[n] < RMAX}
        stuck = [sc for n, sc in scores.items() if n not in grew and ranks[n] < RMAX]
        assert all(scores[g] >= max(stuck, default=0) for g in grew)  # the most important grow first
        for n in grew:
            k = ranks[n]
            for name, reset in ((f"{n}.lora_A", (k, slice(None))), (f"{n}.lora_B", (slice(None), k))):
                before, after = rec["state_before"][name], rec["state_after"][name]
                shape = rec["before"][name].shape
                for key in ("exp_avg", "exp_avg_sq"):
                    x0, x1 = before[key].view(shape), after[key].view(shape)
                    assert not x1[reset].any()
                    keep = torch.ones(shape, dtype=torch.bool)
                    keep[reset] = False
                    assert torch.equal(x0[keep], x1[keep])
            ranks[n] += 1
        assert rec["method"]["ranks"] == ranks
    assert decisions >= 3 and selective >= 1  # some decision grew only the most important modules
    first, final = records[0]["before"], records[-1]["after"]
    for n, r in ranks.items():  # rows beyond the final rank never moved; their B columns are still zero
        assert torch.equal(first[f"{n}.lora_A"][r:], final[f"{n}.lora_A"][r:])
        assert not final[f"{n}.lora_B"][:, r:].any()
    print("final ranks:", sorted(ranks.values()))


def test_ranks_restored_from_state(tmp_path):
    row = Row(["peft=triadaptlora", "peft.r_init=2", "peft.r_max=5"], r"")
    _, method, *_ = make(row, tmp_path)
    names = list(method.ranks())
    state = {"ranks": {n: 2 + i % 4 for i, n in enumerate(names)}}
    _, resumed, *_ = make(row, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.ranks() == state["ranks"] != method.ranks()
    assert all(int(m.mask.sum()) == state["ranks"][n] and m.mask[: state["ranks"][n]].all()
               for n, m in resumed.modules.items())
