"""Section 4.1 variants as configured by configs/brats.py: each has the parameter tree the paper describes."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from gazejax.methods import san_aab
from tests.conftest import tiny_brats_config


def _param_tree(method):
    cfg = tiny_brats_config("/nonexistent", "/nonexistent")
    cfg.method = method
    model = san_aab.build_model(cfg)
    x = san_aab.init_batch(cfg)["image"]
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0, impl="rbg"), x, train=False))
    return shapes["params"]


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_variant_parameter_trees():
    trees = {m: _param_tree(m) for m in ("backbone", "ours", "gaze_star", "san_star", "ours_no_gaze", "ours_surv")}
    assert set(trees["backbone"]) == {"encoder", "decoder"}
    assert set(trees["ours"]) == {"encoder", "decoder", "san", "aab"}
    assert set(trees["ours_no_gaze"]) == set(trees["ours"])  # same network, other SAN target
    assert set(trees["san_star"]) == {"encoder", "decoder", "san", "san_fuse"}  # no attention parameters
    assert set(trees["gaze_star"]) == {"encoder", "decoder", "gaze_head"}
    assert set(trees["ours_surv"]) == set(trees["ours"]) | {"survival_head"}
    head = trees["ours_surv"]["survival_head"]
    assert set(head) == {"kernel", "bias"} and head["kernel"].shape[-1] == 3  # exactly one Dense, 3 classes
    for m in trees:  # every variant shares the backbone's encoder/decoder shapes (so checkpoints transfer)
        assert jax.tree.map(lambda a: a.shape, trees[m]["encoder"]) == \
            jax.tree.map(lambda a: a.shape, trees["backbone"]["encoder"])
    assert _count(trees["ours_surv"]) - _count(trees["ours"]) == _count(head)


@pytest.mark.parametrize("method", ["gaze_star", "san_star", "ours_surv"])
def test_variant_losses_use_their_heads(method):
    cfg = tiny_brats_config("/nonexistent", "/nonexistent")
    cfg.method = method
    model = san_aab.build_model(cfg)
    x = np.zeros((1, 32, 32, 32, 4), np.float32)
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0, impl="rbg"), x), x, train=True))
    assert out["gaze"] is not None and out["gaze"].shape == (1, 2, 2, 2, 1)
    assert (out["survival"] is not None) == (method == "ours_surv")
