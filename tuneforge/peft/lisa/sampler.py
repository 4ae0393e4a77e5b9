"""Which layers LISA trains in a period: a pure function of (seed, period, weights), so every rank picks the
same layers without talking, and a resumed run picks what the uninterrupted one did.

uniform   gamma distinct layers, each subset equally likely (what the authors' released code does).
weighted  gamma distinct layers drawn with probability proportional to an importance weight w_l (weighted
          sampling without replacement, Efraimidis & Spirakis 2006: key_l = u_l ** (1 / w_l), keep the top
          gamma). tuneforge's weight is the layer's mean weight norm,
              w_l = mean over the layer's weight matrices W of ||W||_F / sqrt(numel(W)),
          recomputed from the current weights at each resample: the per-layer weight-norm statistic the paper
          uses to motivate importance sampling (its Fig. 1), measured on the model being tuned.
"""

from __future__ import annotations

import torch


def generator(seed: int, period: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + period * 7919 + 17)


def sample(seed: int, period: int, n_layers: int, gamma: int, weights: list[float] | None = None) -> list[int]:
    g = generator(seed, period)
    if weights is None:
        chosen = torch.randperm(n_layers, generator=g)[:gamma]
    else:
        w = torch.tensor(weights, dtype=torch.float64).clamp(min=1e-12)
        u = torch.rand(n_layers, generator=g, dtype=torch.float64)
        chosen = torch.topk(u.log() / w, gamma).indices  # log(u ** (1/w)), monotone in the key
    return sorted(int(i) for i in chosen)
