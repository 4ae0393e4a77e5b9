"""Precision modes: one registered builder per `precision=` option (FP8 / COAT add folders beside this).

A precision contributes `autocast(device)` (the compute dtype of forward/backward), `ds_section()` (DeepSpeed's
mixed-precision engine when the weights themselves are stored in half precision), `optimizer(groups, optim)`
(the client optimizer: a mode may bring its own), `apply(model)`, and in-training hooks (`tuneforge.hooks`)."""
