"""Tuning methods: one folder per method (spec.py: its config; apply.py: the registered builder)."""
