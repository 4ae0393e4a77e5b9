"""Configuration: schemas (dataclasses), Hydra composition with all-at-once validation, cross-axis checks."""
