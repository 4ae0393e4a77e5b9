"""Models: resolve and load weights (HF dir, hub id, GGUF, packaged file), random-init tiny models, and
discovery of a model's decoder-layer list."""
