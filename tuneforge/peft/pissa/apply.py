"""`peft=pissa`: PiSSA, Principal Singular values and Singular vectors Adaptation (Meng et al., 2024,
arXiv 2404.02948), via HF PEFT (`LoraConfig(init_lora_weights="pissa" | "pissa_niter_<n>")`).

Eqs. (2)-(4): W = U S V^T; A = S[:r]^(1/2) V[:, :r]^T, B = U[:, :r] S[:r]^(1/2) (PEFT divides both by
sqrt(alpha / r) so the scaled product is exact), and the frozen base becomes the residual
W_res = W - (alpha / r) B A (Eq. 5). The adapters start on the principal subspace and the model's function is
unchanged at init. The residual is a deterministic function of W (exact SVD; or randomized SVD under the run's
seed), so eval/export rebuild the same W_res before loading the trained A, B; export merges W_res + B A.
The adapter directory (`export/adapter`) is not written: it would hold A, B relative to W_res, not to the
original weights; the merged export is the result.
"""

from __future__ import annotations

from tuneforge.models.shapes import at_most_features, targets
from tuneforge.peft.lora.apply import Lora
from tuneforge.peft.pissa.spec import PissaSpec
from tuneforge.registry import register


@register("peft", "pissa", config=PissaSpec)
class Pissa(Lora):
    @staticmethod
    def shape_problems(spec, shape):
        """The adapter takes r singular components of W: there are min(in, out)."""
        linears, out = targets(shape, spec.target_modules)
        return out + at_most_features("peft.r", spec.r, linears)

    def extra(self):
        n = self.spec.niter
        return {"init_lora_weights": f"pissa_niter_{n}" if n else "pissa"}

    def save_adapter(self, model, path):
        return False
