"""TriAdaptLoRA's defining properties on a real DeepSpeed engine (ZeRO-0 with bf16 weights and fp32 masters, gloo
on CPU):

- importance is the increase of the normalized Frobenius norm of the triangular core, ||tril(L)+triu(U,1)||_F / b;
- at each decision exactly the k(t) most important modules grow (k = int(remaining budget x progress), >= 1),
  so the most important grow first and more follow as the run progresses; growth stops at the budget;
- optimizer state stays consistent: the new rows' Adam state restarts (moments and per-element step counts
  zero: a grown block takes fresh Adam steps, as the released code's new parameter group), every other element
  is unchanged, and so is the fp32 master of every row but the new ones; every optimizer step is AdamW with each
  element's own step count (tests.contracts.adapter_probe); rows/columns beyond a module's rank never move, even
  with weight decay (B's columns, L's rows, U's columns stay exactly zero);
- ranks are restored from the method state (resume).
"""

from __future__ import annotations

import math

import torch

from tests.contracts.adapter_probe import check_adam_steps, probe
from tests.contracts.test_peft_family import Row, make

R0, REF, RMAX, STEPS, WD = 1, 2, 3, 6, 0.1
BASE = ["recipe=quickstart_tiny", "peft=triadaptlora", f"peft.r_init={R0}", f"peft.reference_rank={REF}",
        f"peft.r_max={RMAX}", "peft.grow_by=1", "peft.warmup=0", "peft.grow_every=1", f"trainer.max_steps={STEPS}",
        "trainer.micro_batch_size=2", "trainer.grad_accum=1", "trainer.eval_at_start=false", "data.n_eval=2",
        "trainer.max_new_tokens=2", "optim.lr=1e-2", f"optim.weight_decay={WD}", "precision=bf16",
        "precision.params=bf16"]


def core(rec, n, r, blocks):
    c = torch.tril(rec["before"][f"{n}.lora_L"]) + torch.triu(rec["before"][f"{n}.lora_U"], 1)
    return c[:r, :r].float().norm().item() / blocks


def test_growth_follows_importance_and_state_stays_consistent(tmp_path):
    records = probe(tmp_path, 1, [*BASE, "zero=zero0"])
    ranks = {n: R0 for n in records[0]["method"]["ranks"]}
    blocks = dict.fromkeys(ranks, 1)
    budget, decisions, partial = REF * len(ranks), 0, 0
    for rec in records:
        last = rec["last"]
        if last.get("step") != rec["step"]:
            assert rec["method"]["ranks"] == ranks
            continue
        decisions += 1
        scores, grew, k = last["scores"], set(last["grew"]), last["k"]
        for n in ranks:  # the normalized core norm, recomputed from the weights before the decision
            assert math.isclose(last["norms"][n], core(rec, n, ranks[n], blocks[n]), rel_tol=1e-5, abs_tol=1e-7)
        remaining = budget - sum(ranks.values())
        assert k == min(max(int(remaining * rec["step"] / STEPS), 1), sum(r < RMAX for r in ranks.values()))
        open_ = {n: sc for n, sc in scores.items() if ranks[n] < RMAX}
        kth = sorted(open_.values(), reverse=True)[k - 1]
        assert grew == {n for n, sc in open_.items() if sc >= kth and sc > 0}  # the k most important modules
        partial += len(grew) < len(open_)
        for n in grew:
            new = ranks[n]
            for name, idx in (("lora_A", (new, slice(None))), ("lora_B", (slice(None), new)),
                              ("lora_L", (new, slice(None))), ("lora_U", (slice(None), new))):
                before, after = rec["state_before"][f"{n}.{name}"], rec["state_after"][f"{n}.{name}"]
                shape = rec["before"][f"{n}.{name}"].shape
                keep = torch.ones(shape, dtype=torch.bool)
                keep[idx] = False
                for key in ("exp_avg", "exp_avg_sq", "element_step"):
                    x0, x1 = before[key].view(shape), after[key].view(shape)
                    assert not x1[idx].any() and torch.equal(x0[keep], x1[keep])
                f0, f1 = before["fp32"].view(shape), after["fp32"].view(shape)  # only the new rows are written
                assert torch.equal(f0[keep], f1[keep]) and torch.equal(f1.to(torch.bfloat16),
                                                                       rec["after"][f"{n}.{name}"])
            ranks[n] += 1
            blocks[n] += 1
        assert rec["method"]["ranks"] == ranks
    assert decisions >= 2 and partial >= 1 and sum(ranks.values()) <= budget + len(ranks)
    steps = check_adam_steps(records, wd=WD)
    print(f"adam steps checked: {steps}")
    assert steps["fresh"] > 0
    first, final = records[0]["before"], records[-1]["after"]
    for n, r in ranks.items():  # beyond the final rank nothing ever moved
        assert torch.equal(first[f"{n}.lora_A"][r:], final[f"{n}.lora_A"][r:])
        assert not final[f"{n}.lora_B"][:, r:].any() and not final[f"{n}.lora_U"][:, r:].any()
        assert not final[f"{n}.lora_L"][r:].any()
    print("final ranks:", sorted(ranks.values()))


def test_ranks_restored_from_state(tmp_path):
    row = Row(["peft=triadaptlora", "peft.r_init=2", "peft.r_max=8"], r"")
    _, method, *_ = make(row, tmp_path)
    names = list(method.ranks())
    state = {"ranks": {n: 2 + i % 4 for i, n in enumerate(names)}, "blocks": dict.fromkeys(names, 3),
             "norms": dict.fromkeys(names, 0.5)}
    _, resumed, *_ = make(row, tmp_path)
    resumed.load_state_dict(state)
    assert resumed.ranks() == state["ranks"] != method.ranks()
    assert resumed.state_dict()["blocks"] == state["blocks"] and resumed.state_dict()["norms"] == state["norms"]
    assert all(int(m.mask.sum()) == state["ranks"][n] and m.mask[: state["ranks"][n]].all()
               for n, m in resumed.modules.items())


def test_grown_ranks_train_and_growth_keeps_the_function():
    """Growth 2 -> 4 -> 6 -> 8 on a real layer fitting a full-rank target: at each growth the output is unchanged,
    and within a few steps the new block trains (B[:, new] and C[new, :] non-zero) and the numerical rank of
    Delta W = s B C A (C = tril(L) + triu(U, 1), computed here from the parameters) exceeds the previous rank.
    (With the new block at zero everywhere, B[:, new] and C[new, :] sit at an exact saddle and stay 0.)"""
    from tuneforge.peft.triadaptlora.apply import TriAdaptLora
    from tuneforge.peft.triadaptlora.layer import TriAdaptLinear
    from tuneforge.peft.triadaptlora.spec import TriAdaptLoraSpec

    torch.manual_seed(0)
    n_in, n_out, r0, rmax, alpha = 16, 12, 2, 8, 4.0
    layer = TriAdaptLinear(torch.nn.Linear(n_in, n_out), r0, rmax, alpha, torch.Generator().manual_seed(1))
    method = TriAdaptLora(TriAdaptLoraSpec(r_init=r0, reference_rank=rmax, r_max=rmax, grow_by=2, warmup=10**6))
    x = torch.randn(64, n_in)
    y = layer.base(x) + x @ torch.randn(n_out, n_in).T  # a full-rank change to learn
    params = [layer.lora_A, layer.lora_B, layer.lora_L, layer.lora_U]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)

    def delta_w():  # s B C A from the raw parameters (entries beyond the rank are zero in B / C)
        a, b, lo, up = (p.detach().double() for p in params)
        return (alpha / r0) * b @ (torch.tril(lo) + torch.triu(up, 1)) @ a

    def num_rank(w):
        sv = torch.linalg.svdvals(w)
        return int((sv > 1e-6 * sv[0]).sum()) if sv[0] > 0 else 0

    def train(steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(layer(x), y).backward()
            opt.step()

    train(5)
    prev = num_rank(delta_w())
    assert prev == r0
    for r1 in (4, 6, 8):
        new = slice(r1 - 2, r1)
        with torch.no_grad():
            out_before, dw_before = layer(x), delta_w()
        method.grow(layer, None)
        with torch.no_grad():
            assert torch.equal(layer(x), out_before) and torch.equal(delta_w(), dw_before)  # same function
        train(5)
        core = torch.tril(layer.lora_L) + torch.triu(layer.lora_U, 1)
        assert layer.lora_B[:, new].abs().min() > 0 and core[new, :r1].abs().max() > 0
        rank = num_rank(delta_w())
        assert rank > prev, f"rank of Delta W stayed {rank} after growing to {r1}"
        prev = rank
    assert prev == rmax
