"""Calibration: token windows from the recipe's data, the first decoder layer's inputs, and each linear's input
statistics gathered by forward hooks while a decoder layer runs over the windows (one window at a time: only the
hidden states between layers are kept, never a linear's inputs).

    windows(samples, n, seqlen, seed)   [n', seqlen] token windows: the tokenized samples shuffled (seeded),
                                        concatenated and cut (n' < n when the data is shorter)
    Stats                               one linear's inputs x (tokens x in) summed over every window:
        gram   G = sum x^T x  [in, in]  (SparseGPT's H = 2 G / windows; the report's ||(W - W^) X||^2 = tr(D G D^T))
        total  sum x          [in]      (DSnoT's E[X])
        tokens, windows
      and what the methods read from them: sq_norm ||X_j||^2 = G_jj (Wanda), mean E[X_j], var Var(X_j) (DSnoT)
    collect(layer, linears, inputs, kwargs)  {name: Stats} of `linears` (modules inside `layer`) and the layer's
                                        outputs on `inputs`
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from tuneforge.models.layers import layer_output


def windows(samples: list[list[int]], n: int, seqlen: int, seed: int) -> torch.Tensor:
    pool = list(samples)
    random.Random(seed).shuffle(pool)
    stream = torch.tensor([t for ids in pool for t in ids], dtype=torch.long)
    have = min(n, len(stream) // seqlen)
    return stream[: have * seqlen].view(have, seqlen)


@dataclass
class Stats:
    gram: torch.Tensor
    total: torch.Tensor
    tokens: int = 0
    windows: int = 0

    @classmethod
    def empty(cls, n: int, device) -> Stats:
        return cls(torch.zeros(n, n, device=device), torch.zeros(n, device=device))

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.gram.dtype)
        self.gram.addmm_(x.T, x)
        self.total += x.sum(0)
        self.tokens += x.shape[0]
        self.windows += 1

    @property
    def sq_norm(self) -> torch.Tensor:
        return self.gram.diagonal()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)

    @property
    def var(self) -> torch.Tensor:
        return (self.sq_norm / max(self.tokens, 1) - self.mean**2).clamp_min(0)


@torch.no_grad()
def collect(layer: nn.Module, linears: dict[str, nn.Linear], inputs: list, kwargs: dict) -> dict[str, Stats]:
    stats = {n: Stats.empty(m.in_features, m.weight.device) for n, m in linears.items()}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: stats[n].add(args[0])) for n, m in linears.items()]
    try:
        for x in inputs:
            layer(x, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def forward(layer: nn.Module, inputs: list, kwargs: dict) -> list:
    return [layer_output(layer(x, **kwargs)) for x in inputs]
