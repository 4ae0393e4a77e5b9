"""Quantization of the base model: one folder per method. A quantizer contributes `load_kwargs()` (e.g. a
bitsandbytes config passed to from_pretrained) and `apply(model)` (post-load changes). `compute_dtype` is the
precision group's compute dtype (fp32, bf16, fp16), set by the model builder before `apply`."""


class Quantizer:
    compute_dtype: str = "fp32"

    def __init__(self, spec):
        self.spec = spec

    def load_kwargs(self) -> dict:
        return {}

    def apply(self, model):
        return model
