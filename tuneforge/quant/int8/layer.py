"""`Int8Linear`: bitsandbytes' Linear8bitLt whose int8 state follows the weight when the module moves.

Linear8bitLt keeps its codes and row scales in attributes beside the weight's data (`weight.CB`, `weight.SCB`
until the first forward, then `state.CB`, `state.SCB`). torch's Module._apply (model.to(device), which DeepSpeed
calls on the whole model) replaces only the weight's `.data`, so those attributes stay where they were (e.g. on
the CPU after the model moved to the GPU); bitsandbytes' own `Linear8bitLt.to` fixes the state only when called on
the layer itself. Here every _apply re-points the codes at the moved data and moves the scales with it."""

from __future__ import annotations

import bitsandbytes as bnb


class Int8Linear(bnb.nn.Linear8bitLt):
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        data = self.weight.data
        for holder in (self.weight, self.state):
            if getattr(holder, "CB", None) is not None:
                holder.CB = data
            scb = getattr(holder, "SCB", None)
            if scb is not None and scb.device != data.device:
                holder.SCB = scb.to(data.device)
        return self
