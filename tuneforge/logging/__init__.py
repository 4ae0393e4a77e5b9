"""Console output (rich: live progress, summary panel) and metrics sinks (JSONL always, TensorBoard optional)."""
