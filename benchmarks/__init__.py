"""Benchmarks of gazejax components, run as `python -m benchmarks.<name>` from the repository root."""
