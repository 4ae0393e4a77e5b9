"""Quantization of the base model: one folder per method. A quantizer contributes `load_kwargs()` (e.g. a
bitsandbytes config passed to from_pretrained) and `apply(model)` (post-load changes)."""


class Quantizer:
    def __init__(self, spec):
        self.spec = spec

    def load_kwargs(self) -> dict:
        return {}

    def apply(self, model):
        return model
