from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Caps, Spec, knob, positive

FAMILIES = ("llama", "mistral", "qwen2")  # RMSNorm decoders whose width is config.hidden_size and head_dim explicit


@dataclass
class PatSpec(Spec):
    name: str = knob("pat", "PAT: learn which hidden channels to remove while tuning (arXiv 2408.14721); the "
                            "export is a narrower model (hidden_size = keep)")
    keep: int = knob(0, "hidden channels kept (the model's new hidden_size); 0: ratio decides")
    ratio: float = knob(0.25, "fraction of the hidden channels removed when keep=0 (the paper's 25%)")
    r: int = knob(200, "rank of each hybrid sparsification module W_up W_down (the reference's 200)")
    identity_weight: float = knob(1.0, "weight of the identity loss MSE(W_down W_downᵀ, I) added to the task loss")
    mask_weight: float = knob(1.0, "weight of the mask loss (the channel count and the pull of every logit to +-0.5)")
    freeze_at: float = knob(0.8, "fraction of the steps after which the mask is frozen, binary: the top-`keep` channels")
    embedding_hsm: bool = knob(True, "an HSM on the embedding output too (the reference); false: the embedding output is "
                                     "only masked, and a tied head stays tied at export")

    caps = Caps(whole_weights_in_training="the mask is shared by every layer and the export rewrites whole matrices")

    def problems(self):
        out = positive(self, "r") + positive(self, "keep", "identity_weight", "mask_weight", allow_zero=True)
        if self.keep == 0 and not 0 < self.ratio < 1:
            out.append(f"ratio={self.ratio} must be in (0, 1) (or set keep=<channels>)")
        if not 0 < self.freeze_at <= 1:
            out.append(f"freeze_at={self.freeze_at} must be in (0, 1], e.g. 0.8")
        return out

    def cross_problems(self, specs):
        p = specs.get("prune")
        if p is not None and p.name != "none":
            return [f"peft=pat with prune={p.name}: PAT folds its modules into o_proj and down_proj, which would fill "
                    "their pruned zeros again: use prune=none (PAT removes whole hidden channels itself), or "
                    "peft=perp to retrain a pruned model"]
        return []

    def kept(self, hidden: int) -> int:
        return self.keep or hidden - round(self.ratio * hidden)
