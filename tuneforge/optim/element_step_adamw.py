"""AdamW whose bias correction uses a step count per element, for tuning methods that restart the Adam state of
single rows of a tensor during training (SwitchLoRA switching vectors, TriAdaptLoRA growing ranks). Used as the
client optimizer when the method's spec declares `Caps(element_steps=True)`; `optim=adamw` hyper-parameters.

Per element e of a parameter, with gradient g, moments m, v and its own step count k (Loshchilov & Hutter's
AdamW, Kingma & Ba's bias correction, with k in place of the tensor's step t):
    started = k > 0 or g != 0          an element's Adam state starts with its first non-zero gradient
    k <- k + 1                         (started elements only)
    p <- p (1 - lr wd)                 (started elements only: weight decay never moves a frozen, reset row)
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
    p <- p - lr (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)
A method restarts rows by zeroing m, v and k there (tuneforge.peft.adapters.write): their next update is exactly
a fresh Adam step, whatever the tensor's age. An element that was never started has m = v = 0, so its moments
and value stay as they are. State per parameter (or per flat ZeRO partition): 'step' (the tensor's own count, as
torch's AdamW keeps it: DeepSpeed's checkpoints read it), 'exp_avg', 'exp_avg_sq', and 'element_step' (float32,
same shape: DeepSpeed links every such tensor to per-parameter fragments, so tuneforge.distributed.optim_state
reads and writes it under ZeRO 0-3 like the moments).

Reference: the SwitchLoRA authors' StepAdamW (a step per row of A, per column of B, zeroed with the moments on a
switch). Departures: the count is per element rather than per row (a flat ZeRO partition may cut a row; rows
are reset whole, so their elements share one count); an element does not count steps before its first non-zero
gradient (the authors count the steps of a frozen row, so after N frozen steps its first real update uses
k = N + 1 with moments holding one gradient: ~0.5x a fresh step for N = 5), and frozen elements get no weight
decay (the authors' decays them). Bias corrections are computed in float64.
"""

from __future__ import annotations

import torch

KEY = "element_step"


class ElementStepAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @staticmethod
    def fresh_state(p: torch.Tensor) -> dict:
        """The state of a parameter that has taken no step (also what optim_state.materialize creates)."""
        return {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                KEY: torch.zeros_like(p, dtype=torch.float32)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.to(p.dtype)
                st = self.state[p]
                if not st:
                    st.update(self.fresh_state(p))
                st["step"] += 1
                k = st[KEY]
                started = (k > 0) | (g != 0)
                k.add_(started.to(k.dtype))
                if wd:
                    p.mul_(torch.where(started, 1.0 - lr * wd, 1.0).to(p.dtype))
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                kk = k.clamp(min=1).double()
                step_size = (lr / (1 - b1 ** kk)).to(p.dtype)
                bc2_sqrt = (1 - b2 ** kk).sqrt().to(p.dtype)
                p.addcdiv_(m * step_size, (v.sqrt() / bc2_sqrt).add_(eps), value=-1)
        return loss
