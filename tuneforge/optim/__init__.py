"""Optimizers and learning-rate schedules. Each contributes a pure DeepSpeed config section; an optimizer that
DeepSpeed cannot build from JSON (bitsandbytes 8-bit AdamW) is built here and handed to the engine."""
