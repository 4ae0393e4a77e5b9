"""Base for every config dataclass ("spec"). Specs are data: they import no torch.

`knob(default, help)` declares a field with its user-facing help (printed by `tuneforge show --doc`).
`problems()` returns every range problem of the spec at once; `__post_init__` raises them together.
`caps` declares, as data, what the option demands of the other axes (`Caps`; config/checks.py maps each demand to
the constraints it sets). `cross_problems(specs)` is an option's own check against other groups' values;
`trainable_estimate(parts)` a tuning method's predicted trainable parameters, `weight_bytes(numel, rows)` a
quantizer's bytes per quantized weight matrix and `state_bytes()` an optimizer's state bytes per trained element
(all read by the memory planner, tuneforge/plan/).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field


def knob(default, help: str):  # noqa: A002 - "help" reads best in the specs
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Caps:
    """Capabilities of one option, read by config/checks.py (its docstring lists the constraint of each).
    A text field is empty when the option does not have the capability; otherwise it says why, in words that
    continue "<group>=<name> ...: ", so the checks can name the reason in their message."""

    # tuning methods (peft)
    whole_weights_at_build: str = ""  # reads each base weight matrix whole, in full precision, when built
    whole_weights_in_training: str = ""  # its layers read (and write) whole base weight matrices every step
    trains_base_weights: bool = False  # the base model's own weights are trained
    needs_quantized_base: str = ""  # the quant option it needs, e.g. "quant=nf4"
    carries_optimizer_state: str = ""  # moves per-parameter optimizer state across engine rebuilds: when
    writes_optimizer_rows: bool = False  # resets optimizer moments row by row during training
    element_steps: bool = False  # Adam keeps a step count per element, restarted with the rows (optim/element_step_adamw)
    needs_tasks: bool = False  # needs multi-task data (data.tasks)
    backbone_without_autograd: str = ""  # the frozen model runs without autograd (no activations kept)
    base_matmul_only: bool = False  # its frozen base linear weights are read only by their layer's own matmul
    #   (nn.Linear's forward): under autocast they may be stored in the compute dtype (precision.frozen_in_compute)
    # quantization
    quantized_base: str = ""  # what the base weights become, e.g. "4-bit"
    trained_with: str = ""  # the tuning method that trains such a base, e.g. "peft=qlora"
    # optimizers
    eight_bit_states: bool = False  # optimizer moments stored block-wise in 8 bits
    client_optimizer: bool = False  # built by tuneforge and handed to DeepSpeed (not DeepSpeed's own)
    opaque_states: str = ""  # its per-parameter states cannot be copied out and back in (why)
    partitioned_states: str = ""  # optimizer states quantized per group of each rank's flat ZeRO partition
    # data selection
    reselects: str = ""  # changes the training set during training (when): refused with packed sequences
    # precision
    fp8_kernels: str = ""  # its matmuls need FP8 kernels (a CUDA device of compute capability >= 8.9)
    # any option
    needs_cuda: str = ""  # runs only on a CUDA device (why): refused before load when the run's device is the CPU
    fix: str = ""  # how to drop this option's demands on its own axis, e.g. "set peft.init=random"


class SpecError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class Spec:
    """Mixin for spec dataclasses: `problems()` lists range errors; construction fails with all of them."""

    caps = Caps()  # a class attribute, not a field; a spec whose demands depend on its values overrides `caps`

    def problems(self) -> list[str]:
        return []

    def cross_problems(self, specs: dict) -> list[str]:
        """Problems of this option against the other groups' specs that only it understands (e.g. its own task
        list against data.tasks). Generic demands are `caps`."""
        return []

    def trainable_estimate(self, parts) -> tuple[str, int] | None:
        """Tuning methods: (label, trainable parameters) predicted from the model's `footprint.Parts`, for the
        memory plan; None: not estimable (planned as full fine-tuning)."""
        return None

    def weight_bytes(self, numel: int, rows: int) -> float | None:
        """Quantizers: bytes that a linear weight of `numel` elements and `rows` output rows takes once quantized
        (codes and scales); None: weights stay in the training dtype."""
        return None

    def __post_init__(self):
        probs = self.problems()
        if probs:
            raise SpecError(probs)


def one_of(spec, name: str, allowed) -> list[str]:
    value = getattr(spec, name)
    if value not in allowed:
        return [f"{name}={value!r} is not one of {', '.join(map(str, allowed))}"]
    return []


def positive(spec, *names: str, allow_zero: bool = False) -> list[str]:
    out = []
    for n in names:
        v = getattr(spec, n)
        if v < 0 or (v == 0 and not allow_zero):
            out.append(f"{n}={v} must be {'>= 0' if allow_zero else '> 0'}")
    return out


def has_targets(spec) -> list[str]:
    """Adapter methods: at least one target module."""
    return [] if spec.target_modules else ["target_modules is empty: list module names or use ['all-linear']"]


def help_of(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
