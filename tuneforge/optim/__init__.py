"""Optimizers and learning-rate schedules. Each contributes a pure DeepSpeed config section; an optimizer that
DeepSpeed cannot build from JSON (bitsandbytes 8-bit AdamW; ElementStepAdamW, AdamW with a step count per
element for tuning methods that restart rows of their Adam state) is built here and handed to the engine."""
