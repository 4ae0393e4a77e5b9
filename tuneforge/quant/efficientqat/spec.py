from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, one_of, positive

GROUP_SIZES = (64, 128)  # the reference's (and its GPTQ export's) group sizes


@dataclass
class EfficientQATSpec(Spec):
    name: str = knob("efficientqat", "EfficientQAT: uniform asymmetric group-wise integer weights, fitted block by "
                                     "block (Block-AP) before training; training then tunes the step sizes "
                                     "(peft=e2e_qp)")
    bits: int = knob(4, "bits per weight: 2, 3 or 4")
    group_size: int = knob(128, "input columns sharing one step size and zero point: 64 or 128")
    samples: int = knob(4096, "Block-AP calibration windows (reference: 4096); drawn from the run's training "
                              "samples, concatenated and cut into windows of `seqlen` tokens")
    val_samples: int = knob(64, "further windows on which each block's reconstruction loss is reported (0: none)")
    seqlen: int = knob(2048, "tokens per calibration window (reference: 2048)")
    batch_size: int = knob(2, "calibration windows per Block-AP step")
    epochs: int = knob(2, "Block-AP epochs over the windows, per block (0: round-to-nearest, no training)")
    quant_lr: float = knob(1e-4, "Block-AP learning rate of the step sizes and zero points")
    weight_lr: float = knob(-1.0, "Block-AP learning rate of the block's weights (-1: the reference's 1e-5, 2e-5 "
                                  "at 2 bits; 0: weights frozen)")
    min_lr_factor: float = knob(20.0, "Block-AP cosine schedule ends at lr / min_lr_factor")
    store: str = knob("fp32", "precision of the blocks' inputs and targets kept between blocks (fp32, bf16, fp16: "
                              "half the memory, 2 x samples x seqlen x hidden values; the reference keeps fp16)")
    clip_grad: float = knob(0.3, "Block-AP gradient-norm clip (0: off; the reference's code never applies its "
                                 "--clip_grad 0.3, see the module docstring)")

    @property
    def caps(self):
        return Caps(quantized_base=f"{self.bits}-bit integer", trained_with="peft=e2e_qp",
                    whole_weights_at_build="Block-AP trains each decoder layer's whole weight matrices after load")

    @property
    def weight_lr_value(self) -> float:
        return self.weight_lr if self.weight_lr >= 0 else (2e-5 if self.bits == 2 else 1e-5)

    def weight_bytes(self, numel, rows):
        """In training: one uint8 code per weight (unpacked, see the module docstring), and per group of
        group_size a uint8 zero point and an fp32 step size. The GPTQ export packs the codes to bits/8 bytes."""
        return numel + 5 * numel / self.group_size

    def cross_problems(self, specs):
        if specs["zero"].stage == 3:
            return ["quant=efficientqat under ZeRO-3: Block-AP trains whole blocks when the model is built, and the "
                    "integer weights are buffers ZeRO-3 does not partition: use zero=zero2 (or zero0/zero1)"]
        return []

    def problems(self):
        out = one_of(self, "bits", (2, 3, 4)) + one_of(self, "group_size", GROUP_SIZES)
        out += one_of(self, "store", ("fp32", "bf16", "fp16"))
        out += positive(self, "samples", "seqlen", "batch_size", "quant_lr", "min_lr_factor")
        out += positive(self, "val_samples", "epochs", "clip_grad", allow_zero=True)
        if self.weight_lr < 0 and self.weight_lr != -1:
            out.append(f"weight_lr={self.weight_lr} must be >= 0, or -1 (the reference's default for the bits)")
        if self.samples % self.batch_size or self.val_samples % self.batch_size:
            out.append(f"samples={self.samples} and val_samples={self.val_samples} must be multiples of "
                       f"batch_size={self.batch_size}")
        return out
