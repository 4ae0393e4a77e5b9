"""tuneforge: declarative fine-tuning of large language models on DeepSpeed."""

__version__ = "0.1.0"
