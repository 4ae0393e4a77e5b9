"""`peft=miss`: MiSS, Matrix Shard Sharing (Kang & Yin, 2024, arXiv 2409.15371; formerly "Bone"), via HF PEFT
(`MissConfig`, PEFT >= 0.17).

MiSS (balance form, PEFT's default): the input is cut into in_features / r shards of size r, which are summed;
one trainable D (r x out_features, zero init) maps the sum to the output:
    y = x W0^T + (sum_k x[..., k r:(k+1) r]) D          (x zero-padded to a multiple of r)
equivalently W = W0 + tile(D^T) (D^T repeated along in_features), so merge/unmerge are exact additions.
`mini_r > 0` (the "mini" form) shares an r x mini_r block repeated along out_features instead.
"""

from __future__ import annotations

from tuneforge.models.shapes import at_most_features, divides_features, targets
from tuneforge.models.targets import target_names
from tuneforge.peft.base import TuningMethod
from tuneforge.peft.miss.spec import MissSpec
from tuneforge.registry import register


@register("peft", "miss", config=MissSpec)
class Miss(TuningMethod):
    @staticmethod
    def shape_problems(spec, shape):
        """PEFT's MissLayer: r <= in_features; the mini form tiles r x mini_r blocks along out_features."""
        linears, out = targets(shape, spec.target_modules)
        out += at_most_features("peft.r", spec.r, linears, sides=("in",))
        return out + (divides_features("peft.mini_r", spec.mini_r, linears, sides=("out",)) if spec.mini_r else [])

    def init_weights(self):
        return "mini" if self.spec.mini_r else True

    def apply(self, model, ctx):
        from peft import MissConfig, get_peft_model

        s = self.spec
        config = MissConfig(r=s.r, miss_dropout=s.dropout, target_modules=target_names(model, s.target_modules),
                            init_weights=self.init_weights(), mini_r=getattr(s, "mini_r", 0) or 1,
                            task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    def merged(self, model):
        return model.merge_and_unload()

    def save_adapter(self, model, path):
        model.save_pretrained(str(path))
        return True
