from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, positive


@dataclass
class LoraSpec(Spec):
    name: str = knob("lora", "low-rank adapters (HF PEFT)")
    r: int = knob(16, "adapter rank")
    alpha: float = knob(32.0, "scaling numerator: the update is (alpha / r) * B @ A")
    dropout: float = knob(0.0, "dropout on the adapter input")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear but the head)")
    bias: str = knob("none", "train biases: none, all, lora_only")
    modules_to_save: list[str] = knob([], "modules trained in full beside the adapters (e.g. ['lm_head'])")

    caps = Caps(base_matmul_only=True)  # PEFT's LoRA layer calls its base layer and adds the adapters' output

    def problems(self):
        out = positive(self, "r", "alpha")
        if not 0 <= self.dropout < 1:
            out.append(f"dropout={self.dropout} must be in [0, 1)")
        out += has_targets(self)
        return out + ([] if self.bias in ("none", "all", "lora_only") else [f"bias={self.bias!r}: none, all or lora_only"])

    def trainable_estimate(self, parts):
        """r x (in + out) per adapted linear; known from Parts only when every linear of every layer is adapted
        and nothing else trains."""
        if list(self.target_modules) != ["all-linear"] or self.bias != "none" or self.modules_to_save:
            return None
        what = f"LoRA r={self.r} all-linear"
        return (what if self.name == "lora" else f"{self.name} ({what})"), parts.n_layers * parts.linear_in_out * self.r
