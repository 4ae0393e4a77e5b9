from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, has_targets, knob, one_of, positive


@dataclass
class PerpSpec(Spec):
    name: str = knob("perp", "PERP: retrain a pruned model's biases, norms, head and a sparsity-preserving LoRA "
                             "(arXiv 2312.15230); the merged export keeps the pruned zeros")
    form: str = knob("masklora", "masklora: W + (alpha/r) (B A ⊙ 1[W != 0]) (B = 0 at start); scalelora: W ⊙ (B A) "
                                 "(A, B all 1/sqrt(r) at start, so B A = 1)")
    r: int = knob(16, "rank of B A")
    alpha: float = knob(32.0, "masklora: scaling numerator, the update is (alpha / r) (B A ⊙ mask); scalelora: unused")
    target_modules: list[str] = knob(["all-linear"], "the pruned linears that get a sparsity-preserving LoRA, or "
                                                     "['all-linear'] (every linear of the decoder layers)")
    biases: bool = knob(True, "train every bias of the model (Llama has none)")
    norms: bool = knob(True, "train every normalisation layer's parameters (RMSNorm / LayerNorm)")
    head: str = knob("lora", "the LM head (never pruned): lora (a plain LoRA of the same rank, as the reference; a "
                              "head tied to the embeddings is untied first) or freeze")

    caps = Caps(whole_weights_in_training="its layers read whole (pruned) weight matrices to mask or scale them")

    def problems(self):
        out = positive(self, "r", "alpha") + one_of(self, "form", ("masklora", "scalelora"))
        return out + one_of(self, "head", ("lora", "freeze")) + has_targets(self)
