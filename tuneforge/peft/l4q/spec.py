from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, positive


@dataclass
class L4qSpec(Spec):
    name: str = knob("l4q", "L4Q: LoRA merged into the weights, then a learned-step quantizer (arXiv 2402.04902); "
                             "exports integer weights, no adapter")
    r: int = knob(16, "LoRA rank")
    alpha: float = knob(32.0, "scaling numerator: the merged weight is W0 + (alpha / r) * B @ A")
    bits: int = knob(4, "weight bits N: signed integer grid [-2^(N-1), 2^(N-1) - 1]")
    group_size: int = knob(128, "input features sharing one scale and offset (the paper: 128; 64 for widths that "
                                "128 does not divide, e.g. SmolLM2's 576); 0: one per output row")
    target_modules: list[str] = knob(["all-linear"], "module names to quantize and adapt, or ['all-linear'] "
                                                     "(every linear in the decoder layers; never the LM head)")

    # its layers read the whole base weight matrix every step (merged weight -> quantizer) and need it in full
    # precision: no ZeRO-3 partitions, no quantized base
    caps = Caps(whole_weights_in_training="its layers quantize the whole merged weight matrix every step")

    def problems(self):
        out = positive(self, "r", "alpha") + positive(self, "group_size", allow_zero=True) + has_targets(self)
        return out + ([] if 2 <= self.bits <= 8 else [f"bits={self.bits} must be in 2..8 (codes are stored as int8)"])

    def trainable_estimate(self, parts):
        """LoRA's r x (in + out) per adapted linear plus a scale and an offset per group of group_size weights
        (the layer's parameters, norms included, stand in for its linear weights: off by 2 x hidden / group)."""
        if list(self.target_modules) != ["all-linear"] or not self.group_size:
            return None
        lora, quant = parts.linear_in_out * self.r, 2 * (parts.per_layer // self.group_size)
        return f"L4Q r={self.r} all-linear + scales, offsets", parts.n_layers * (lora + quant)
