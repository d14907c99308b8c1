"""Tests of gazejax.losses against hand-computed values and independent formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax import losses


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_soft_dice_hand_computed_with_empty_channel():
    # Two samples, two voxels, two channels; channel 1 has no foreground anywhere.
    logits = np.array([[[0.0, -2.0], [2.0, -1.0]], [[1.0, 0.5], [-1.0, -3.0]]], np.float32)
    targets = np.array([[[1, 0], [1, 0]], [[0, 0], [1, 0]]], np.float32)
    p = sigmoid(logits.astype(np.float64))
    # channel 0, pooled over batch and space: p = .5, .8808, .7311, .2689 with t = 1, 1, 0, 1
    inter0 = p[0, 0, 0] + p[0, 1, 0] + p[1, 1, 0]
    dice0 = (2 * inter0 + 1) / (np.sum(p[..., 0] ** 2) + 3 + 1)
    dice1 = 1 / (np.sum(p[..., 1] ** 2) + 1)  # empty target: only the smoothing term on top
    np.testing.assert_allclose(losses.dice_per_channel(logits, targets), [dice0, dice1], rtol=1e-6)
    np.testing.assert_allclose(losses.soft_dice_loss(logits, targets), 1 - (dice0 + dice1) / 2, rtol=1e-6)
    # Per-sample: sample 1 channel 0 has t = [0, 1].
    d10 = (2 * p[1, 1, 0] + 1) / (p[1, 0, 0] ** 2 + p[1, 1, 0] ** 2 + 1 + 1)
    np.testing.assert_allclose(losses.dice_per_channel(logits, targets, per_sample=True)[1, 0], d10, rtol=1e-6)


def test_soft_dice_perfect_and_bf16():
    targets = np.zeros((1, 4, 4, 4, 3), np.float32)
    targets[0, 1:3, 1:3, 1:3, 0] = 1
    logits = jnp.asarray(np.where(targets > 0, 30.0, -30.0), jnp.bfloat16)
    loss = losses.soft_dice_loss(logits, targets)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="soft_dice|dice_per_channel"):
        losses.soft_dice_loss(logits, targets[..., :2])


def test_gaze_bce_hand_computed_and_masked():
    logits = np.array([[[0.5], [-1.0]], [[2.0], [0.0]], [[9.0], [9.0]]], np.float32)
    target = np.array([[[1.0], [0.25]], [[0.0], [1.0]], [[np.nan], [np.nan]]], np.float32)
    has_gaze = np.array([True, True, False])

    def bce(x, y):
        p = sigmoid(np.float64(x))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    s0 = (bce(0.5, 1.0) + bce(-1.0, 0.25)) / 2
    s1 = (bce(2.0, 0.0) + bce(0.0, 1.0)) / 2
    np.testing.assert_allclose(losses.gaze_bce(logits, target, has_gaze), (s0 + s1) / 2, rtol=1e-6)
    grads = jax.grad(losses.gaze_bce)(jnp.asarray(logits), target, has_gaze)
    assert np.all(np.isfinite(grads)) and np.all(grads[2] == 0)


def test_gaze_bce_no_gaze_is_zero_with_finite_grads():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 1)), jnp.float32)
    target = jnp.full((2, 3, 3, 1), jnp.nan)
    has_gaze = jnp.zeros(2, bool)
    value, grads = jax.value_and_grad(losses.gaze_bce)(logits, target, has_gaze)
    assert float(value) == 0.0
    assert np.all(np.asarray(grads) == 0.0)


def mit_kl(pred, gt):
    """KLdiv.m of the MIT Saliency Benchmark, written out in float64."""
    eps = 2.220446049250313e-16
    p, q = pred / pred.sum(), gt / gt.sum()
    return np.sum(q * np.log(eps + q / (p + eps)))


def small_maps():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 4, 1)).astype(np.float32)
    target = rng.uniform(size=(2, 5, 4, 1)).astype(np.float32)
    target[0, 0, :] = 0.0  # zero-gaze pixels
    return logits, target


def softmax_maps(logits):
    flat = logits.reshape(len(logits), -1).astype(np.float64)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(logits.shape)


def test_kl_saliency_matches_mit_formula_by_hand():
    logits, target = small_maps()
    probs = softmax_maps(logits)
    expected = np.mean([mit_kl(probs[b], target[b]) for b in range(2)])
    np.testing.assert_allclose(losses.kl_saliency(logits, target), expected, rtol=1e-5)
    # torch form: sum q (ln q - ln p) with 0 ln 0 = 0; equal here up to the eps terms.
    np.testing.assert_allclose(losses.kl_saliency(logits, target, form="torch"), expected, rtol=1e-5)


def test_kl_saliency_matches_metrics_kl_div():
    saliency = pytest.importorskip("gazejax.metrics.saliency")
    logits, target = small_maps()
    probs = softmax_maps(logits)
    expected = np.mean([saliency.kl_div(probs[b, ..., 0], target[b, ..., 0]) for b in range(2)])
    np.testing.assert_allclose(losses.kl_saliency(logits, target), expected, rtol=1e-5)


def test_kl_saliency_masked():
    logits, target = small_maps()
    probs = softmax_maps(logits)
    target_nan = target.copy()
    target_nan[1] = np.nan
    has_gaze = np.array([True, False])
    for form in ("mit", "torch"):
        np.testing.assert_allclose(
            losses.kl_saliency(logits, target_nan, has_gaze, form=form), mit_kl(probs[0], target[0]), rtol=1e-5
        )
        value, grads = jax.value_and_grad(losses.kl_saliency)(jnp.asarray(logits), target_nan, np.zeros(2, bool), form)
        assert float(value) == 0.0 and np.all(np.asarray(grads) == 0.0)


def test_classification_losses():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    lse0 = np.log(np.exp(2.0) + 1 + np.exp(-1.0))
    np.testing.assert_allclose(losses.softmax_ce(logits, labels), ((lse0 - 2.0) + np.log(3.0)) / 2, rtol=1e-6)
    # Unknown label (mask False): only sample 0 counts.
    np.testing.assert_allclose(losses.softmax_ce(logits, labels, np.array([True, False])), lse0 - 2.0, rtol=1e-6)
    targets = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = sigmoid(logits.astype(np.float64))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    np.testing.assert_allclose(losses.sigmoid_bce_multilabel(logits, targets), bce.mean(), rtol=1e-6)
    mask = np.array([[1, 1, 0], [0, 1, 1]], bool)
    np.testing.assert_allclose(losses.sigmoid_bce_multilabel(logits, targets, mask), bce[mask].mean(), rtol=1e-6)


def test_kendall_weighting_forms():
    l1, l2, s1, s2 = 0.7, 2.0, 0.3, -0.4
    kendall = l1 / (2 * np.exp(2 * s1)) + s1 + l2 / (2 * np.exp(2 * s2)) + s2
    np.testing.assert_allclose(losses.kendall_weighting([l1, l2], jnp.array([s1, s2])), kendall, rtol=1e-6)
    sc, si = np.exp(s1), np.exp(s2)
    mtunet = l1 / sc**2 + np.log(sc + 1) + l2 / (2 * si**2) + np.log(si + 1)
    np.testing.assert_allclose(losses.mtunet_weighting(l1, l2, s1, s2), mtunet, rtol=1e-6)
    # Gradient wrt log sigma of L/(2 s^2) + log s vanishes at s^2 = L.
    grad = jax.grad(lambda s: losses.kendall_weighting([l2], [s]))(0.5 * np.log(l2))
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="must match"):
        losses.kendall_weighting([l1], [s1, s2])


def test_weighted_sum():
    total, terms = losses.weighted_sum({"seg": 0.5, "gaze": 2.0}, {"seg": 1.0, "gaze": 0.25, "unused": 9.0})
    np.testing.assert_allclose(total, 1.0)
    assert set(terms) == {"seg", "gaze"} and float(terms["gaze"]) == 2.0
    with pytest.raises(ValueError, match="no weight"):
        losses.weighted_sum({"seg": 0.5, "gaze": 2.0}, {"seg": 1.0})
