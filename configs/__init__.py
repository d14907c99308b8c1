"""Experiment configurations (ml_collections); each file's docstring gives its run command."""
