"""Which layers LISA trains in a period: a pure function of (seed, period, weights), so every rank picks the
same layers, and a resumed run picks what the uninterrupted one did.

uniform   gamma distinct layers, each subset equally likely (what the authors' released code does:
          `np.random.choice(range(total_layers), n_layers, replace=False)` in LMFlow's
          DynamicLayerActivationCallback).
weighted  gamma distinct layers whose inclusion probabilities are exactly proportional to the weights w_l:
              pi_l = min(1, c * w_l),  c chosen so that sum_l pi_l = gamma
          (`inclusion_probabilities`: the layers whose share gamma * w_l / sum(w) exceeds 1 are included with
          probability 1 and the excess is redistributed over the others, repeatedly). The draw is systematic
          (Madow, 1949) sampling over a seeded random order: lay the pi_l end to end on [0, gamma) in that
          order, draw one u ~ U[0, 1), and take the layers whose segments hold u, u + 1, ..., u + gamma - 1.
          Every segment is at most 1 long, so it holds at most one point: exactly gamma distinct layers, and
          layer l is taken with probability exactly pi_l. (Efraimidis-Spirakis keys u ** (1 / w), the earlier
          draw, give inclusion probabilities that are not proportional to w once gamma > 1.)
What the weights are (the measured importance of each layer) is decided in `apply.py`.
"""

from __future__ import annotations

import bisect

import torch


def generator(seed: int, period: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + period * 7919 + 17)


def inclusion_probabilities(weights: list[float], gamma: int) -> list[float]:
    """pi_l = min(1, c * w_l) with sum(pi) = gamma (negative weights count as 0; if the layers left after capping
    all weigh 0, the remaining draws spread evenly over them)."""
    w = [max(float(x), 0.0) for x in weights]
    n = len(w)
    if not 0 < gamma <= n:
        raise ValueError(f"gamma={gamma} must be in 1..{n}")
    capped: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in capped]
        rest, total = gamma - len(capped), sum(w[i] for i in free)
        pi = [1.0] * n
        for i in free:
            pi[i] = rest * w[i] / total if total > 0 else rest / len(free)
        over = {i for i in free if pi[i] > 1.0}
        if not over:
            return pi
        capped |= over


def systematic(pi: list[float], order: list[int], u: float) -> list[int]:
    """Madow's systematic sampling: the units (in `order`) whose cumulative segment holds u + j, j = 0..n-1."""
    n = round(sum(pi))
    ends, acc = [], 0.0
    for i in order:
        acc += pi[i]
        ends.append(acc)
    ends[-1] = max(ends[-1], float(n))  # rounding of the sum must not drop the last point
    chosen = []
    for j in range(n):
        k = min(bisect.bisect_right(ends, u + j), len(order) - 1)
        while order[k] in chosen:  # only reachable through float rounding at a segment boundary
            k = (k + 1) % len(order)
        chosen.append(order[k])
    return chosen


def sample(seed: int, period: int, n_layers: int, gamma: int, weights: list[float] | None = None) -> list[int]:
    g = generator(seed, period)
    if weights is None:
        chosen = torch.randperm(n_layers, generator=g)[:gamma].tolist()
    else:
        order = torch.randperm(n_layers, generator=g).tolist()
        u = float(torch.rand(1, generator=g, dtype=torch.float64))
        chosen = systematic(inclusion_probabilities(weights, gamma), order, u)
    return sorted(int(i) for i in chosen)
