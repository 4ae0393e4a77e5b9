"""PAT's parts: the shared trainable mask and the hybrid sparsification module (HSM) after a residual writer."""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.peft.adapters import AdapterLinear


class SharedMask(nn.Module):
    """One mask over the hidden channels, shared by every HSM and the embedding output.

    Soft (training, before the freeze): M = sigmoid(m / T), T annealed. Frozen: M = `hard`, 1 at the `keep` largest
    logits (ties: the lower channel first), 0 elsewhere; the logits no longer matter."""

    def __init__(self, hidden: int, keep: int, init_logit: float):
        super().__init__()
        self.keep = keep
        self.logits = nn.Parameter(torch.full((hidden,), float(init_logit)))
        self.register_buffer("temperature", torch.tensor(1.0))
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
        return torch.sigmoid(self.logits / self.temperature.float())


class Hsm(AdapterLinear):
    """y = M ⊙ (z + W_up W_down z), z = base(x): an HSM on the output of a linear that writes the residual stream
    (o_proj, down_proj). W_down (r x d) starts with orthonormal rows (identity loss 0), W_up (d x r) at zero."""

    def __init__(self, base: nn.Linear, r: int, mask: SharedMask, gen: torch.Generator):
        super().__init__(base)
        d = base.out_features
        q = torch.linalg.qr(torch.randn(d, r, generator=gen)).Q  # d x r, orthonormal columns
        self.W_down = nn.Parameter(q.T.contiguous())
        self.W_up = nn.Parameter(torch.zeros(d, r))
        object.__setattr__(self, "shared", mask)  # not a submodule: one mask, named once (model.pat_mask)

    def forward(self, x):
        z = self.base(x)
        z = z + (z @ self.W_down.T.to(z.dtype)) @ self.W_up.T.to(z.dtype)
        return z * self.shared().to(z.dtype)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W', b') with M ⊙ (I + W_up W_down) folded into the base: y = W' x + b' equals forward(x)."""
        m = self.shared().float()
        t = m[:, None] * (torch.eye(len(m), device=m.device) + self.W_up.float() @ self.W_down.float())
        b = self.base.bias
        return t @ self.base.weight.float(), (t @ b.float() if b is not None else None)
