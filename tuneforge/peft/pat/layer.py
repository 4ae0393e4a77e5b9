"""PAT's parts: the shared trainable mask, its loss, and the hybrid sparsification modules (HSMs) after the embedding
and after every residual writer. Equations: tuneforge/peft/pat/apply.py."""

from __future__ import annotations

import math

import torch
from torch import nn

from tuneforge.peft.adapters import AdapterLinear

COUNT_WEIGHT = 10.0  # the reference's weight of the channel-count term of the mask loss
POLE = 0.5  # the reference pulls every mask logit to +-0.5


class SharedMask(nn.Module):
    """One mask over the hidden channels, shared by every HSM.

    Soft (before the freeze): M = 1 / (1 + exp(min(-T m, 10))) + b, with T and b set each step by the schedule
    (`schedule`) and m starting at 0 (M = 1.5 at step 0, 1 when b reaches 0). Frozen: M = `hard`, 1 at the `keep`
    largest logits (ties: the lower channel first), 0 elsewhere; the logits no longer matter."""

    def __init__(self, hidden: int, keep: int):
        super().__init__()
        self.keep = keep
        self.logits = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.5))
        self.register_buffer("frozen", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("hard", torch.ones(hidden))

    def top(self) -> torch.Tensor:
        order = torch.sort(self.logits.detach().float(), descending=True, stable=True).indices
        out = torch.zeros_like(self.hard)
        out[order[: self.keep]] = 1
        return out

    @torch.no_grad()
    def freeze(self) -> None:
        self.hard.copy_(self.top())
        self.frozen.fill_(1)

    def forward(self) -> torch.Tensor:
        if int(self.frozen):
            return self.hard
        return 1.0 / (1.0 + torch.exp((-self.temperature.float() * self.logits).clamp(max=10))) + self.bias.float()


def schedule(step: int, total: int) -> tuple[float, float]:
    """(T, b) at `step` of `total`: T = 1 / (1 - ln(max(1, step)) / ln(total) + 1e-6), b = max(0.5 - step/total, 0)."""
    total = max(total, 2)
    return 1.0 / (1.0 - math.log(max(1, step)) / math.log(total) + 1e-6), max(0.5 - step / total, 0.0)


def mask_loss(m: torch.Tensor, keep: int) -> torch.Tensor:
    """L_M = 10 |#{m >= 0} - keep| / keep + mean_{m > 0} (m - 0.5)^2 + mean_{m <= 0} (m + 0.5)^2 (an empty side: 0)."""
    out = COUNT_WEIGHT * ((m >= 0).sum() - keep).abs() / keep
    for side, pole in ((m > 0, POLE), (m <= 0, -POLE)):
        if bool(side.any()):
            out = out + ((m[side] - pole) ** 2).mean()
    return out


def mask_grad(m: torch.Tensor, keep: int) -> torch.Tensor:
    """dL_M/dm with the count's step passed straight through: 10 sign(#{m >= 0} - keep) / keep for every logit,
    plus 2 (m - pole) / (size of its side)."""
    m = m.detach().float()
    out = torch.full_like(m, COUNT_WEIGHT * float(torch.sign((m >= 0).sum() - torch.tensor(keep))) / keep)
    for side, pole in ((m > 0, POLE), (m <= 0, -POLE)):
        n = int(side.sum())
        if n:
            out[side] += 2 * (m[side] - pole) / n
    return out


class Transform(nn.Module):
    """x -> s ⊙ M ⊙ (x + W_up W_down x) on the last dimension: W_down (r x d) initialised like nn.Linear's weight
    (uniform in +-1/sqrt(d)), W_up (d x r) at zero, the channel scale s at one."""

    def __init__(self, d: int, r: int, mask: SharedMask, gen: torch.Generator):
        super().__init__()
        bound = 1.0 / math.sqrt(d)
        self.W_down = nn.Parameter(torch.rand(r, d, generator=gen) * 2 * bound - bound)
        self.W_up = nn.Parameter(torch.zeros(d, r))
        self.scale = nn.Parameter(torch.ones(d))
        object.__setattr__(self, "shared", mask)  # not a submodule: one mask, named once (model.pat_mask)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + (z @ self.W_down.T.to(z.dtype)) @ self.W_up.T.to(z.dtype)
        return z * (self.shared() * self.scale).to(z.dtype)

    def matrix(self) -> torch.Tensor:
        """T with forward(z) = T z for a column z: diag(s ⊙ M) (I + W_up W_down)."""
        m = (self.shared() * self.scale).float()
        return m[:, None] * (torch.eye(len(m), device=m.device) + self.W_up.float() @ self.W_down.float())


class Hsm(AdapterLinear):
    """y = T(base(x)): an HSM on the output of a linear that writes the residual stream (o_proj, down_proj)."""

    def __init__(self, base: nn.Linear, hsm: Transform):
        super().__init__(base)
        self.hsm = hsm

    def forward(self, x):
        return self.hsm(self.base(x))

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W', b') with the HSM folded into the base: y = W' x + b' equals forward(x)."""
        t, b = self.hsm.matrix(), self.base.bias
        return t @ self.base.weight.float(), (t @ b.float() if b is not None else None)
