"""Shared fixtures: a tiny synthetic BraTS set and a tiny SAN+AAB config for engine tests."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_brats_root(tmp_path_factory) -> str:
    from gazejax.data.synthetic import brats as synth

    out = tmp_path_factory.mktemp("synthetic_brats")
    return synth.generate(str(out), cases=8, seed=3, shape=(40, 40, 36), gaze_share=0.6)


def tiny_brats_config(root: str, cache: str, **overrides):
    """configs/brats.py demo preset shrunk to a few seconds of CPU compile + run."""
    from configs import brats

    c = brats.get_config("preset=demo,method=ours")
    c.data.root = root
    c.data.cache_dir = cache
    c.data.crop_size = (32, 32, 32)
    c.data.num_threads = 1
    c.model.width = 2
    c.model.san_width = 2
    c.model.aab_heads = 1
    c.model.aab_head_dim = 4
    c.epochs = 1
    c.eval_every_epochs = 100
    c.eval.figure_cases = 0
    c.eval.save_predictions = False
    c.log_every_steps = 1
    c.checkpoint.async_save = False
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c
