"""`merge`: the run's tuning method folded into plain weights (`method.merged`), its PEFT adapter saved beside
(`method.save_adapter`, methods that have one). A method that cannot merge (`hf_export = False`, e.g. LST)
writes its own format instead (`method.export`) and the stage returns None."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tuneforge.config.spec import Spec, knob
from tuneforge.export.base import Stage
from tuneforge.registry import register


@dataclass
class MergeSpec(Spec):
    takes: ClassVar[str] = "trained"
    adapter: bool = knob(True, "also write the method's PEFT adapter to export/adapter (methods that have one)")


@register("export", "merge", config=MergeSpec)
class Merge(Stage):
    def run(self, model, ctx):
        method, kw = ctx.method, ctx.variant_kw
        if self.spec.adapter and ctx.out is not None:
            method.save_adapter(model, ctx.out / "adapter", **kw)
        if not method.hf_export:
            method.export(model, ctx.out, **kw)
            return None
        return method.merged(model, **kw)
