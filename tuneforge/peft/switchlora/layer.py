"""A SwitchLoRA linear: h = W0 x + s B A x (s = alpha / r), with pools of candidate vectors for the rows of A and
the columns of B (seeded, non-trainable buffers; a switched-out vector is written back into its slot), per-index
freeze masks for the Adam re-warm-up, and, with bf16/fp16 weights, an fp32 copy of W0 that switches update."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.peft.adapters import AdapterLinear


def init_bounds(n_in: int, n_out: int, r: int) -> tuple[float, float]:
    """Uniform bounds of the candidates (the paper's initialisation: std(B A x) kept like Kaiming's, with the
    updates through A and through B of the same size): std_A = (sqrt(m) r / n^1.5)^(1/4) sqrt(g),
    std_B = (r / sqrt(m n))^(1/4) sqrt(g), g the Kaiming gain of leaky_relu(sqrt 5); bound = sqrt(3) std."""
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    std_a = (math.sqrt(n_out) * r / n_in ** 1.5) ** 0.25 * math.sqrt(gain)
    std_b = (r / math.sqrt(n_out * n_in)) ** 0.25 * math.sqrt(gain)
    return math.sqrt(3) * std_a, math.sqrt(3) * std_b


class SwitchLoraLinear(AdapterLinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, pool: int, gen: torch.Generator,
                 order: str = "sequential", w0_master: bool = False):
        super().__init__(base)
        n_out, n_in = base.weight.shape
        n = min(pool or min(n_in, n_out), min(n_in, n_out))
        self.r, self.scaling, self.pool = r, alpha / r, n
        bound_a, bound_b = init_bounds(n_in, n_out, r)
        # the pools change in training (a switched-out vector is written back): SwitchLora.resume_buffers saves them
        self.register_buffer("cand_a", (torch.rand(n, n_in, generator=gen) * 2 - 1) * bound_a, persistent=False)
        self.register_buffer("cand_b", (torch.rand(n, n_out, generator=gen) * 2 - 1) * bound_b, persistent=False)
        if order == "sequential":  # the authors' continuous switch: a window of the pool, B's shifted by r // 2
            self.sel_a = list(range(n - r, n))  # candidate index held by each row of A
            self.sel_b = [n - r + (i - r // 2) % r for i in range(r)]  # ... and by each column of B
        else:
            self.sel_a = torch.randperm(n, generator=gen)[:r].tolist()
            self.sel_b = torch.randperm(n, generator=gen)[:r].tolist()
        self.lora_A = nn.Parameter(self.cand_a[self.sel_a].clone())
        self.lora_B = nn.Parameter(self.cand_b[self.sel_b].T.contiguous())
        self.until_a, self.until_b = [0] * r, [0] * r  # row i of A (column i of B) frozen while step < until
        self.cursor = [0, r // 2]  # where the next switch of A / of B starts (cyclic), as in the authors' code
        self.next = [0, 0]  # sequential order: the next candidate of A / of B (cyclic, held ones skipped)
        self.register_buffer("freeze_a", torch.zeros(r, dtype=torch.bool), persistent=False)
        self.register_buffer("freeze_b", torch.zeros(r, dtype=torch.bool), persistent=False)
        with torch.no_grad():  # B A != 0 at init: W0 absorbs it so the layer starts as the pretrained one
            base.weight.sub_((self.scaling * self.lora_B @ self.lora_A).to(base.weight.dtype))
        if w0_master:  # bf16/fp16 weights: W0 in fp32, which every switch updates exactly (W0 = its rounding)
            self.register_buffer("w0_fp32", base.weight.detach().float().clone(), persistent=False)

    def set_frozen(self, step: int) -> None:
        self.freeze_a.copy_(torch.tensor([step < u for u in self.until_a]))
        self.freeze_b.copy_(torch.tensor([step < u for u in self.until_b]))

    def extra(self, x):
        a = torch.where(self.freeze_a[:, None], self.lora_A.detach(), self.lora_A)
        b = torch.where(self.freeze_b[None, :], self.lora_B.detach(), self.lora_B)
        return F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype)) * self.scaling

    def delta(self):
        return self.scaling * self.lora_B @ self.lora_A

    def state(self) -> dict:
        return {"sel_a": self.sel_a, "sel_b": self.sel_b, "until_a": self.until_a, "until_b": self.until_b,
                "cursor": self.cursor, "next": self.next}

    def load(self, st: dict) -> None:
        self.sel_a, self.sel_b = list(st["sel_a"]), list(st["sel_b"])
        self.until_a, self.until_b, self.cursor = list(st["until_a"]), list(st["until_b"]), list(st["cursor"])
        self.next = list(st.get("next", [0, 0]))
