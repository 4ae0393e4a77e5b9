"""`optim=adamw` (DeepSpeed builds it: torch AdamW, or DeepSpeedCPUAdam when states are offloaded) and
`optim=adamw8bit` (bitsandbytes AdamW8bit: block-wise 8-bit moments, Dettmers et al. 2021).

Built with `element_steps=True` (the tuning method's spec declares `Caps(element_steps=True)`: it restarts the
Adam state of single rows), `optim=adamw` is tuneforge's ElementStepAdamW instead, a client optimizer handed to
DeepSpeed (element_step_adamw.py); the DeepSpeed config then has no optimizer section."""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, positive
from tuneforge.registry import register


@dataclass
class OptimSpec(Spec):
    name: str = knob("adamw", "optimizer")
    lr: float = knob(1e-4, "peak learning rate")
    weight_decay: float = knob(0.0, "decoupled weight decay")
    betas: list[float] = knob([0.9, 0.999], "Adam beta1, beta2")
    eps: float = knob(1e-8, "Adam epsilon")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0: off)")

    def problems(self):
        out = positive(self, "lr", "eps") + positive(self, "weight_decay", "grad_clip", allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"betas={list(self.betas)} must be two numbers in [0, 1)")
        return out


@dataclass
class AdamW8bitSpec(OptimSpec):
    name: str = knob("adamw8bit", "optimizer")

    caps = Caps(eight_bit_states=True, client_optimizer=True, fix="use optim=adamw")


def _params(spec: OptimSpec) -> dict:
    return {"lr": spec.lr, "betas": list(spec.betas), "eps": spec.eps, "weight_decay": spec.weight_decay}


@register("optim", "adamw", config=OptimSpec)
class AdamW:
    def __init__(self, spec: OptimSpec, element_steps: bool = False):
        self.spec, self.element_steps = spec, element_steps

    def ds_section(self, offloaded: bool) -> dict:
        if self.element_steps:  # a client optimizer (a torch one: it also runs on offloaded CPU partitions)
            return {"zero_allow_untested_optimizer": True}
        # torch's AdamW unless ZeRO offloads optimizer states, where DeepSpeed's vectorised CPU Adam is required.
        return {"optimizer": {"type": "AdamW", "params": {**_params(self.spec), "torch_adam": not offloaded}}}

    def build(self, params):
        if self.element_steps:
            from tuneforge.optim.element_step_adamw import ElementStepAdamW

            return ElementStepAdamW(params, **_params(self.spec))
        return None  # built by DeepSpeed from ds_section


@register("optim", "adamw8bit", config=AdamW8bitSpec)
class AdamW8bit(AdamW):
    def ds_section(self, offloaded: bool) -> dict:
        return {"zero_allow_untested_optimizer": True}

    def build(self, params):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **_params(self.spec))
