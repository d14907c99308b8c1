"""SAN+AAB method pieces: targets, the hybrid loss (Eq. 3-4), sliding-window stitching, label rebuilding, and
loss decrease on a tiny synthetic batch."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.methods.san_aab import evaluate as eval3d
from gazejax import losses
from gazejax.data.brats import pipeline as brats_pipeline
from gazejax.methods.san_aab import spec as san_aab
from tests.conftest import tiny_brats_config


def test_regions_and_lowres_targets():
    seg = np.zeros((32, 32, 16), np.uint8)
    seg[0:16, 0:16, 0:16] = 2
    seg[4:8, 4:8, 4:8] = 1
    seg[8:10, 8:10, 8:10] = 4
    t = brats_pipeline.regions_onehot(seg)
    assert t[..., 0].sum() == 8 and t[..., 1].sum() == 64 + 8 and t[..., 2].sum() == 16 ** 3
    low = brats_pipeline.wt_lowres(seg)
    assert low.shape == (2, 2, 1, 1)
    np.testing.assert_allclose(low[..., 0, 0], [[1.0, 0.0], [0.0, 0.0]])


def _cfg(method):
    c = tiny_brats_config("/nonexistent", "/nonexistent")
    c.method = method
    return c


def _outputs_and_batch(with_gaze):
    rng = np.random.default_rng(0)
    outputs = {"seg": jnp.asarray(rng.normal(size=(2, 16, 16, 16, 3)), jnp.float32),
               "gaze": jnp.asarray(rng.normal(size=(2, 1, 1, 1, 1)), jnp.float32), "deep": [], "survival": None}
    batch = {"target": jnp.asarray(rng.random((2, 16, 16, 16, 3)) > 0.7, jnp.float32),
             "gaze": jnp.asarray([[[[[0.9]]]], [[[[0.2]]]]], jnp.float32),
             "has_gaze": jnp.asarray(with_gaze), "wt_lowres": jnp.full((2, 1, 1, 1, 1), 0.5, jnp.float32),
             "survival": jnp.asarray([0, -1], jnp.int32)}
    return outputs, batch


def test_hybrid_loss_is_w1_dice_plus_w2_gaze_bce():
    outputs, batch = _outputs_and_batch([True, False])
    total, m = san_aab.loss_fn(outputs, batch, None, _cfg("ours"))
    dice = losses.soft_dice_loss(outputs["seg"], batch["target"])
    x, y = float(outputs["gaze"][0, 0, 0, 0, 0]), 0.9  # only sample 0 has gaze
    bce = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))
    np.testing.assert_allclose(float(m["loss_gaze"]), bce, rtol=1e-5)
    np.testing.assert_allclose(float(total), float(dice) + 0.5 * bce, rtol=1e-5)


def test_ours_no_gaze_never_reads_gaze():
    outputs, batch = _outputs_and_batch([True, True])
    a, _ = san_aab.loss_fn(outputs, batch, None, _cfg("ours_no_gaze"))
    batch["gaze"] = batch["gaze"] * 0 + jnp.nan  # poisoned gaze must not matter
    batch["has_gaze"] = jnp.asarray([False, False])
    b, m = san_aab.loss_fn(outputs, batch, None, _cfg("ours_no_gaze"))
    assert np.isfinite(float(b)) and float(a) == float(b) and float(m["loss_gaze"]) > 0


def test_window_starts_cover_and_align():
    assert eval3d.window_starts(48, 48, 0.5, 16) == [0]
    starts = eval3d.window_starts(100, 48, 0.5, 16)
    assert starts[0] == 0 and starts[-1] == 52 and all(s % 16 == 0 for s in starts[:-1])
    covered = np.zeros(100, bool)
    for s in starts:
        covered[s:s + 48] = True
    assert covered.all()


def test_sliding_window_stitches_a_pointwise_model_exactly():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(64, 48, 32, 4)).astype(np.float32)

    def predict(x):  # logits = first 3 channels, gaze = mean over 16^3 blocks of channel 3
        b, d, h, w, _ = x.shape
        g = x[..., 3].reshape(b, d // 16, 16, h // 16, 16, w // 16, 16).mean(axis=(2, 4, 6))[..., None]
        return {"seg": x[..., :3], "gaze": g}

    seg, gaze = eval3d.sliding_window(predict, image, (32, 32, 32), 0.5, batch=3)
    np.testing.assert_allclose(seg, 1 / (1 + np.exp(-image[..., :3])), rtol=1e-5, atol=1e-6)
    blocks = image[..., 3].reshape(4, 16, 3, 16, 2, 16).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(gaze[..., 0], 1 / (1 + np.exp(-blocks)), rtol=1e-5, atol=1e-6)


def test_probs_to_labels_rebuilds_brats_labels():
    prob = np.zeros((2, 2, 1, 3))
    prob[0, 0] = [0.9, 0.9, 0.9]  # ET -> 4
    prob[0, 1] = [0.1, 0.9, 0.9]  # TC\ET -> 1
    prob[1, 0] = [0.1, 0.1, 0.9]  # WT\TC -> 2
    np.testing.assert_array_equal(eval3d.probs_to_labels(prob)[..., 0], [[4, 1], [2, 0]])


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method"):
        san_aab.build_model(_cfg("nope"))
