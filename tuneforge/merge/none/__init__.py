"""`merge=none`: no merge (the default of every recipe; `tuneforge merge` needs a method: merge=<method>)."""

from __future__ import annotations

from tuneforge.merge.base import Merger, MergeSpec
from tuneforge.registry import register


@register("merge", "none", config=MergeSpec)
class NoMerge(Merger):
    def combine(self, taus):
        raise RuntimeError("merge=none merges nothing")
