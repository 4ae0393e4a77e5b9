"""`optim=adamw` (DeepSpeed builds it: torch AdamW, or DeepSpeedCPUAdam when states are offloaded) and the
low-bit and paged AdamWs, client optimizers handed to DeepSpeed (`zero_allow_untested_optimizer`):

    optim=adamw8bit        bitsandbytes AdamW8bit: block-wise dynamic-quantized 8-bit moments (Dettmers et al.
                           2021, arXiv 2110.02861); CPU and CUDA
    optim=ao_adamw8bit     torchao AdamW8bit: the same 8-bit block-wise moments (blocks of 256), torchao's tensor
                           subclass; CPU and CUDA
    optim=ao_adamw4bit     torchao AdamW4bit: 4-bit moments (Li et al. 2023, arXiv 2309.01507: blocks of 128, the
                           second moment on a zero-free linear map); CPU and CUDA
    optim=paged_adamw8bit  bitsandbytes PagedAdamW8bit / PagedAdamW32bit: states in CUDA unified memory that
    optim=paged_adamw32bit the driver pages to host RAM under memory pressure; CUDA only (a check refuses CPU)

torchao's optimizers keep parameters with fewer than 4096 elements (or not a multiple of the block) in fp32, as
bitsandbytes does; they torch.compile their per-parameter step by default (`optim.compile`): the first step
compiles each parameter shape (tens of seconds on a CPU), `optim.compile=false` runs it eagerly (same numbers up
to the compiler's float reassociation).

Built with `element_steps=True` (the tuning method's spec declares `Caps(element_steps=True)`: it restarts the
Adam state of single rows), `optim=adamw` is tuneforge's ElementStepAdamW instead, a client optimizer handed to
DeepSpeed (element_step_adamw.py); the DeepSpeed config then has no optimizer section."""

from __future__ import annotations

import importlib.util
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

    def state_bytes(self) -> float:
        """Optimizer-state bytes per trained element (tuneforge show): two fp32 moments."""
        return 8.0

    def problems(self):
        out = positive(self, "lr", "eps") + positive(self, "weight_decay", "grad_clip", allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"betas={list(self.betas)} must be two numbers in [0, 1)")
        return out


@dataclass
class AdamW8bitSpec(OptimSpec):
    name: str = knob("adamw8bit", "optimizer")

    caps = Caps(eight_bit_states=True, client_optimizer=True, fix="use optim=adamw")

    def state_bytes(self) -> float:
        return BNB_8BIT


# bitsandbytes' 8-bit moments: one byte per element and one fp32 absmax per block of 256, for both moments
# (tensors under 4096 elements keep fp32 moments: not counted)
BNB_8BIT = 2 * (1 + 4 / 256)


@dataclass
class AoAdamWSpec(OptimSpec):
    name: str = knob("ao_adamw8bit", "optimizer")
    block_size: int = knob(256, "elements per quantization block of the moments (torchao: 256 for 8-bit, 128 for 4-bit)")
    compile: bool = knob(True, "torch.compile the per-parameter step (torchao's default; compiling each parameter "
                               "shape takes tens of seconds on a CPU); false: eager")

    caps = Caps(eight_bit_states=True, client_optimizer=True,  # block-wise low-bit states
                opaque_states="torchao's low-bit state tensors cannot be cloned; optim=adamw8bit's can",
                fix="use optim=adamw")

    def problems(self):
        out = super().problems() + positive(self, "block_size")
        if importlib.util.find_spec("torchao") is None:
            out.append(f"optim={self.name} needs the torchao package: pip install 'tuneforge[torchao]'")
        return out

    def state_bytes(self) -> float:
        """Both moments: 8 or 4 bits per element plus one fp32 scale per block (tensors under 4096 elements keep
        fp32 moments: not counted)."""
        return 2 * ((4 if self.name.endswith("4bit") else 8) / 8 + 4 / self.block_size)


@dataclass
class PagedAdamWSpec(OptimSpec):
    name: str = knob("paged_adamw8bit", "optimizer")

    @property
    def caps(self):
        return Caps(eight_bit_states=self.name.endswith("8bit"), client_optimizer=True, fix="use optim=adamw",
                    needs_cuda="its states live in CUDA unified memory, paged to host RAM by the driver; "
                               "optim=adamw8bit is the unpaged 8-bit AdamW")

    def state_bytes(self) -> float:
        return BNB_8BIT if self.name.endswith("8bit") else 8.0


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


@register("optim", "ao_adamw8bit", config=AoAdamWSpec)
@register("optim", "ao_adamw4bit", config=AoAdamWSpec)
class AoAdamW(AdamW8bit):
    def build(self, params):
        import types

        import torch
        from torchao.optim import AdamW4bit, AdamW8bit

        cls = AdamW4bit if self.spec.name == "ao_adamw4bit" else AdamW8bit
        opt = cls(params, block_size=self.spec.block_size, **_params(self.spec))
        if not self.spec.compile:
            step = opt.step

            def eager(self, *args, **kwargs):
                with torch.compiler.set_stance("force_eager"):
                    return step(*args, **kwargs)

            opt.step = types.MethodType(eager, opt)  # a bound method, as LR schedulers expect
        return opt


@register("optim", "paged_adamw8bit", config=PagedAdamWSpec)
@register("optim", "paged_adamw32bit", config=PagedAdamWSpec)
class PagedAdamW(AdamW8bit):
    def build(self, params):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if self.spec.name == "paged_adamw8bit" else bnb.optim.PagedAdamW32bit
        return cls(params, **_params(self.spec))
