"""Quantization of the base model: one folder per method. A quantizer contributes `load_kwargs()` (e.g. a
bitsandbytes config passed to from_pretrained) and `apply(model)` (post-load changes). `compute_dtype` is the
precision group's compute dtype (fp32, bf16, fp16) and `ctx` the run's peft.base.MethodContext (seed, tokenized
training samples, run directory, log: for quantizers that calibrate), both set by the model builder before
`apply`. `check_model(spec, config)` lists the quantizer's model-shape problems before any weight loads."""


class Quantizer:
    compute_dtype: str = "fp32"
    ctx = None

    @staticmethod
    def check_model(spec, config) -> list[str]:
        return []

    def __init__(self, spec):
        self.spec = spec

    def load_kwargs(self) -> dict:
        return {}

    def apply(self, model):
        return model
