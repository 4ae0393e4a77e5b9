"""CoatAdamW: AdamW whose moments live in FP8 with dynamic range expansion (COAT section 4, Algorithm 1).

Each step, per parameter (or per flat ZeRO partition, whichever the optimizer is handed):
    m, v  <- dequantize(state)                                   (quant.expand_dequantize)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2            (fp32)
    p <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    state <- quantize(m), quantize(v)                            (quant.expand_quantize, per group of `group`)
State per parameter, named as in the reference's CoatAdamW: 'step'; 'exp_avg' and 'exp_avg_sq' (float8_e4m3fn,
the parameter's shape: DeepSpeed links such tensors to per-parameter fragments like Adam's moments); and per
group of `group` elements 'scale_*' (s), 'expand_*' (k) and 'sqrt_minmax_*' (c) of each, float32.

On CUDA with the reference's compiled `qoptim_cuda` extension (NVlabs/COAT coat/optimizer/kernels, shipped as
sources in the `fp8-coat` package) importable and the reference's settings (group 128, expansion on), the step
is its fused kernel `fp8_adamw_expand_step` on the same state tensors; otherwise this pure-torch step.
"""

from __future__ import annotations

import math

import torch

from tuneforge.precision.coat.quant import E4M3, expand_dequantize, expand_quantize

MOMENTS = ("exp_avg", "exp_avg_sq")


def _cuda_kernels():
    try:
        import qoptim_cuda
    except ImportError:
        return None
    return qoptim_cuda


class CoatAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 group: int = 128, expand_min: int = 16, expansion: bool = True):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.group, self.expand_min, self.expansion = group, expand_min, expansion
        # torch's load_state_dict casts every floating state tensor to the parameter's dtype: an FP8 moment comes
        # back as float32 holding exactly the FP8 values; cast it back (exact, so a resume stays bitwise)
        self.register_load_state_dict_post_hook(_fp8_again)

    def fresh_state(self, p: torch.Tensor) -> dict:
        """The state of a parameter that has taken no step (also what optim_state.materialize creates)."""
        n = -(-p.numel() // self.group)
        st = {"step": torch.tensor(0.0)}
        for m in MOMENTS:
            st[m] = torch.zeros(p.shape, dtype=E4M3, device=p.device)
            for key in ("scale", "expand", "sqrt_minmax"):
                st[f"{key}_{m}"] = torch.ones(n, dtype=torch.float32, device=p.device)
        return st

    def moment(self, state: dict, m: str) -> torch.Tensor:
        """A moment dequantized to float32."""
        return expand_dequantize(state[m], state[f"scale_{m}"], state[f"expand_{m}"], state[f"sqrt_minmax_{m}"],
                                 self.group)

    def _store(self, state: dict, m: str, x: torch.Tensor) -> None:
        q, s, k, c = expand_quantize(x, self.group, self.expand_min, self.expansion)
        state[m].copy_(q)
        state[f"scale_{m}"].copy_(s)
        state[f"expand_{m}"].copy_(k)
        state[f"sqrt_minmax_{m}"].copy_(c)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kernels = _cuda_kernels() if self.group == 128 and self.expansion else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(self.fresh_state(p))
                st["step"] += 1
                t = int(st["step"].item())
                if kernels is not None and p.is_cuda:
                    kernels.fp8_adamw_expand_step(p, p.grad.to(p.dtype), *(st[f"{key}{m}"] for m in MOMENTS for key in
                                                  ("", "scale_", "expand_", "sqrt_minmax_")),
                                                  b1, b2, lr, wd, eps, t, self.group, self.expand_min)
                    continue
                g = p.grad.float()
                m, v = self.moment(st, "exp_avg"), self.moment(st, "exp_avg_sq")
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                w = p.float()
                if wd:
                    w.mul_(1 - lr * wd)
                w.addcdiv_(m, (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps), value=-lr / (1 - b1**t))
                p.copy_(w)
                self._store(st, "exp_avg", m)
                self._store(st, "exp_avg_sq", v)
        return loss


def _fp8_again(opt: CoatAdamW) -> None:
    for st in opt.state.values():
        for m in MOMENTS:
            if m in st and st[m].dtype != E4M3:
                st[m] = st[m].to(E4M3)
