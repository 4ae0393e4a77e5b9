from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob


@dataclass
class E2EQPSpec(Spec):
    name: str = knob("e2e_qp", "EfficientQAT's E2E-QP: train only the quantization step sizes of a "
                               "quant=efficientqat base, end to end; integers and zero points frozen")

    caps = Caps(needs_quantized_base="quant=efficientqat", fix="use another peft method with another quant option")

    def trainable_estimate(self, parts):
        return None
