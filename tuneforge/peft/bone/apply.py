"""`peft=bone`: Bone, Block-Affine adaptation: the "bat" form of MiSS (Kang & Yin, 2024, arXiv 2409.15371),
via HF PEFT (`MissConfig(init_weights="bat")`).

W0 (out x in) is cut into r x r blocks W_ij (i over out_features / r, j over in_features / r); one trainable
r x r block D_i per block row (zero init) updates every block of its row through the weights themselves:
    W'_ij = W_ij + W_ij D_i + D_i                      (y = x W'^T)
so the update depends on W0 (a non-linear, weight-guided update, unlike LoRA's additive B A). Both dimensions
must be multiples of r. Merge writes W'; unmerge inverts it exactly: W_ij = (W'_ij - D_i)(I + D_i)^-1.
"""

from __future__ import annotations

from tuneforge.models.shapes import divides_features, targets
from tuneforge.peft.bone.spec import BoneSpec
from tuneforge.peft.miss.apply import Miss
from tuneforge.registry import register


@register("peft", "bone", config=BoneSpec)
class Bone(Miss):
    @staticmethod
    def shape_problems(spec, shape):
        """W0 must cut into whole r x r blocks: r divides in_features and out_features of every target."""
        linears, out = targets(shape, spec.target_modules)
        return out + divides_features("peft.r", spec.r, linears)

    def init_weights(self):
        return "bat"
