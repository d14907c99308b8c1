"""Section 4.1 variants as configured by configs/brats.py: each has the parameter tree the paper describes."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from gazejax.methods.san_aab import spec as san_aab
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("backbone,method", [("nnunet", "backbone"), ("nnunet", "ours"), ("dmfnet", "ours"),
                                             ("equiunet", "cbam"), ("equiunet", "tasn")])
def test_table3_cells_build_and_give_a_scalar_loss(backbone, method):
    cfg = tiny_brats_config("/nonexistent", "/nonexistent", **{"model.backbone": backbone, "model.nnunet_width": 2,
                                                               "model.dmfnet_width": 16})
    cfg.method = method
    model = san_aab.build_model(cfg)
    x = np.zeros((1, 32, 32, 32, 4), np.float32)
    batch = {"image": x, "target": np.zeros((1, 32, 32, 32, 3), np.float32),
             "gaze": np.zeros((1, 2, 2, 2, 1), np.float32), "has_gaze": np.ones(1, bool),
             "wt_lowres": np.zeros((1, 2, 2, 2, 1), np.float32), "survival": np.zeros(1, np.int32)}

    def loss():
        variables = model.init(jax.random.key(0, impl="rbg"), x)
        out = model.apply(variables, x, train=True, mutable=list(set(variables) - {"params"}) or False,
                          rngs={"dropout": jax.random.key(1)})
        out = out[0] if isinstance(out, tuple) else out
        return san_aab.loss_fn(out, batch, variables["params"], cfg)

    total, metrics = jax.eval_shape(loss)
    assert total.shape == () and ("loss_gaze" in metrics) == (method != "backbone")
    assert ("loss_gaze_extra0" in metrics) == (method == "tasn")
