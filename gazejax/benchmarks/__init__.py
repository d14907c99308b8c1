"""Benchmarks that print figures (never timed tests): `python -m gazejax.benchmarks.<name>`."""
