"""ElementStepAdamW against AdamW written here from its equations, one element at a time (Loshchilov & Hutter's
decoupled weight decay, Kingma & Ba's bias correction with each element's own step count k): rows whose state is
restarted take a fresh Adam step, a row without gradient is never touched (weight decay included), and on a
tensor whose rows are never restarted it is torch's AdamW."""

from __future__ import annotations

import math

import torch

from tuneforge.optim.element_step_adamw import KEY, ElementStepAdamW

LR, B1, B2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.1


def hand_adamw(p, g, m, v, k):
    """One AdamW step of a single element, in float64 Python arithmetic; (p, m, v, k) after it."""
    if k == 0 and g == 0:
        return p, m, v, k  # not started: nothing moves
    k += 1
    p *= 1 - LR * WD
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    p -= LR * (m / (1 - B1**k)) / (math.sqrt(v / (1 - B2**k)) + EPS)
    return p, m, v, k


def test_restarted_rows_take_fresh_adam_steps_and_frozen_rows_never_move():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = ElementStepAdamW([p], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    ref = {(i, j): (p[i, j].item(), 0.0, 0.0, 0) for i in range(4) for j in range(3)}
    frozen = {4: {1}, 5: {1}, 6: {1}}  # row 1 is restarted at step 4 and gets no gradient for 3 steps
    for step in range(10):
        if step == 4:
            st = opt.state[p]
            for key in ("exp_avg", "exp_avg_sq", KEY):
                st[key][1] = 0
            ref.update({(1, j): (ref[1, j][0], 0.0, 0.0, 0) for j in range(3)})
        g = torch.randn(4, 3)
        for i in frozen.get(step, ()):
            g[i] = 0
        before = p.detach().clone()
        p.grad = g
        opt.step()
        for (i, j), (pv, m, v, k) in ref.items():
            ref[i, j] = hand_adamw(pv, g[i, j].item(), m, v, k)
        got = torch.tensor([[ref[i, j][0] for j in range(3)] for i in range(4)], dtype=torch.float32)
        torch.testing.assert_close(p.detach(), got, rtol=0, atol=1e-6)
        assert opt.state[p][KEY].tolist() == [[float(ref[i, j][3]) for j in range(3)] for i in range(4)]
        if step in frozen:  # a restarted row without gradient: bitwise unchanged, weight decay included
            assert torch.equal(p.detach()[1], before[1])
    # the first update of row 1 after its restart (step 7) was a fresh Adam step: (g / |g|) lr up to eps
    assert opt.state[p][KEY][1].tolist() == [3.0] * 3 and opt.state[p][KEY][0].tolist() == [10.0] * 3


def test_without_restarts_it_is_torch_adamw():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(5, 2))
    b = torch.nn.Parameter(a.detach().clone())
    mine = ElementStepAdamW([a], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    torch_opt = torch.optim.AdamW([b], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, foreach=False)
    for _ in range(6):
        g = torch.randn(5, 2)
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        torch_opt.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)
    assert mine.state[a]["step"].item() == 6 and mine.state[a][KEY].eq(6).all()
