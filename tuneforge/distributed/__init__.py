"""Distributed plumbing: the generated DeepSpeed config, process-group helpers, and launchers."""
