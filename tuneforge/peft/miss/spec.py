from __future__ import annotations

from dataclasses import dataclass

from tuneforge.config.spec import Spec, has_targets, knob, positive


@dataclass
class BlockSpec(Spec):
    """Knobs shared by MiSS and Bone (PEFT's MissConfig)."""

    name: str = knob("miss", "")
    r: int = knob(64, "shard size along in_features (MiSS: D is r x out_features; Bone: r x r blocks)")
    dropout: float = knob(0.0, "dropout on the adapter input")
    target_modules: list[str] = knob(["all-linear"], "module names to adapt, or ['all-linear'] (every linear but the head)")

    def problems(self):
        out = positive(self, "r")
        if not 0 <= self.dropout < 1:
            out.append(f"dropout={self.dropout} must be in [0, 1)")
        return out + has_targets(self)


@dataclass
class MissSpec(BlockSpec):
    name: str = knob("miss", "MiSS: one shared r x out_features matrix D per layer, fed the sum of x's r-sized shards")
    mini_r: int = knob(0, "0: D is r x out_features (balance); > 0: D is r x mini_r, repeated along out_features (mini)")

    def problems(self):
        return super().problems() + positive(self, "mini_r", allow_zero=True)
