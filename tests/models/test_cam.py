"""GG-CAM (Zhu et al.): the CAM layer equals GAP + linear with the same weights, the model adds exactly three
scalars, the selective MSE supervises the TRUE class's sigmoid(alpha Omega) (not the reference code's class 0),
Eq. 11 as printed, and the Eq. 12 peak-in-organ hit."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.methods.ggcam.losses import ggcam_total, selective_mse
from gazejax.metrics.localization import interpretability_hit, scale_mask
from gazejax.models import build
from gazejax.models.cam import CAMLayer, GGCAMModel


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------------------- CAM layer, model

def test_cam_layer_equals_gap_plus_dense_with_the_same_weights():
    feats = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    dense = nn.Dense(3)
    variables = dense.init(jax.random.key(0), feats.mean(axis=(1, 2)))
    variables = jax.tree.map(lambda p: p + 0.3, variables)  # non-zero bias
    cam_vars = CAMLayer(3).init(jax.random.key(1), feats)
    assert jax.tree.map(jnp.shape, cam_vars) == jax.tree.map(jnp.shape, variables)
    assert _count(cam_vars) == _count(variables) == 5 * 3 + 3

    reference = np.asarray(dense.apply(variables, feats.mean(axis=(1, 2))))
    logits, cam = CAMLayer(3).apply(variables, feats)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
    kernel, bias = np.asarray(variables["params"]["kernel"]), np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(cam, np.einsum("bhwk,kc->bhwc", feats, kernel), rtol=1e-5, atol=1e-6)  # Eq. 4
    np.testing.assert_allclose(logits, cam.mean(axis=(1, 2)) + bias, rtol=1e-5, atol=1e-6)  # Eq. 5

    mean_logits, mean_cam = CAMLayer(3, sum_channels=False).apply(variables, feats)  # the reference code's form
    np.testing.assert_allclose(mean_logits, (reference - bias) / 5 + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean_cam, np.asarray(cam) / 5, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_v2_s"])
def test_ggcam_adds_exactly_three_scalars_to_the_linear_head_backbone(name):
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    linear = jax.eval_shape(build(name, num_classes=3).init, jax.random.key(0), x)["params"]
    headless = jax.eval_shape(build(name, num_classes=0).init, jax.random.key(0), x)["params"]
    out, variables = jax.eval_shape(GGCAMModel(name, num_classes=3).init_with_output, jax.random.key(0), x)
    params = variables["params"]
    assert _count(params) == _count(linear) + 3
    assert sorted(params) == ["backbone", "cam_layer", "log_alpha", "log_sigma_ce", "log_sigma_sm"]
    assert jax.tree.map(jnp.shape, params["backbone"]) == jax.tree.map(jnp.shape, headless)
    assert all(params[k].shape == () for k in ("log_alpha", "log_sigma_sm", "log_sigma_ce"))
    assert out["logits"].shape == (1, 3) and out["cam"].shape == (1, 2, 2, 3)


def test_ggcam_table1_inits_and_unknown_backbones():
    assert GGCAMModel("efficientnet_v2_s")._sigma_sm_init() == 1.4e-11
    assert GGCAMModel("resnet50")._sigma_sm_init() == 2.0e-9
    assert GGCAMModel("mobilenet_v2", sigma_sm_init=1e-3)._sigma_sm_init() == 1e-3
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    tiny = {"width_mult": 0.25}
    with pytest.raises(ValueError, match="sigma_sm"):
        jax.eval_shape(GGCAMModel("mobilenet_v2", backbone_kwargs=tiny).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="vit_b_16"):
        jax.eval_shape(GGCAMModel("vit_b_16").init, jax.random.key(0), x)


@pytest.mark.slow
def test_ggcam_forward_cam_from_the_deepest_map():
    """One tiny compiled forward: init values of the scalars, Omega from layer4 (Eq. 4), logits (Eq. 5)."""
    model = GGCAMModel("resnet18", num_classes=3, backbone_kwargs={"width": 4, "in_channels": 1})
    x = jnp.asarray(np.random.default_rng(1).random((2, 64, 64, 1)), jnp.float32)
    variables = model.init(jax.random.key(0, impl="rbg"), x)
    out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    params = variables["params"]
    np.testing.assert_allclose(out["log_sigma_sm"], math.log(2.0e-9), rtol=1e-6)  # Table 1, ResNet
    assert float(out["log_sigma_ce"]) == 0.0 and float(out["log_alpha"]) == 0.0  # sigma_ce = 1, alpha = 1
    layer4 = np.asarray(state["intermediates"]["backbone"]["__call__"][0]["features"]["layer4"])
    assert layer4.shape == (2, 2, 2, 32)
    kernel, bias = np.asarray(params["cam_layer"]["kernel"]), np.asarray(params["cam_layer"]["bias"])
    cam = np.einsum("bhwk,kc->bhwc", layer4, kernel)
    np.testing.assert_allclose(out["cam"], cam, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logits"], cam.mean(axis=(1, 2)) + bias, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ selective MSE, Eq. 9-10

def _mse_inputs():
    rng = np.random.default_rng(2)
    cam = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    gaze = rng.random((2, 3, 3)).astype(np.float32)
    return cam, gaze


def _hand_mse(cam, labels, gaze, alpha):
    return np.mean([np.mean((_sigmoid(alpha * cam[b, :, :, y]) - gaze[b]) ** 2) for b, y in enumerate(labels)])


def test_selective_mse_uses_the_true_class_through_sigmoid_alpha():
    cam, gaze = _mse_inputs()
    log_alpha = math.log(1.5)
    first = float(selective_mse(cam, jnp.array([2, 0]), gaze, log_alpha))
    np.testing.assert_allclose(first, _hand_mse(cam, [2, 0], gaze, 1.5), rtol=1e-6)
    second = float(selective_mse(cam, jnp.array([1, 2]), gaze, log_alpha))
    np.testing.assert_allclose(second, _hand_mse(cam, [1, 2], gaze, 1.5), rtol=1e-6)
    assert abs(first - second) > 1e-3  # the label selects the map
    # The reference code's defect: class 0's raw CAM against Psi, whatever the label.
    defective = np.mean((cam[..., 0] - gaze) ** 2)
    for value in (first, second):
        assert abs(value - defective) > 1e-2
    assert abs(first - _hand_mse(cam, [2, 0], gaze, 1.0)) > 1e-4  # alpha = exp(log_alpha) is used


def test_selective_mse_gradient_reaches_only_the_true_class_map():
    cam, gaze = _mse_inputs()
    labels = jnp.array([1, 2])
    grad = np.asarray(jax.grad(selective_mse)(jnp.asarray(cam), labels, gaze, 0.0))
    for b, y in enumerate([1, 2]):
        assert np.all(np.abs(grad[b, :, :, y]) > 0)
        assert np.all(np.delete(grad[b], y, axis=-1) == 0)


def test_selective_mse_gaze_mask_and_shapes():
    cam, gaze = _mse_inputs()
    poisoned = gaze.copy()
    poisoned[1] = np.nan
    masked = selective_mse(cam, jnp.array([0, 1]), poisoned[..., None], 0.0, jnp.array([True, False]))
    np.testing.assert_allclose(float(masked), _hand_mse(cam[:1], [0], gaze[:1], 1.0), rtol=1e-6)

    def none(c):
        return selective_mse(c, jnp.array([0, 1]), poisoned, 0.0, jnp.array([False, False]))

    assert float(none(jnp.asarray(cam))) == 0.0
    assert np.all(np.asarray(jax.grad(none)(jnp.asarray(cam))) == 0)
    with pytest.raises(ValueError, match="CAM grid"):
        selective_mse(cam, jnp.array([0, 1]), gaze[:, :2], 0.0)


# ------------------------------------------------------------------------------------------------------- Eq. 11

def test_ggcam_total_is_eq11_as_printed():
    ce, sm, sigma_ce, sigma_sm = 1.1, 0.2, 1.7, 0.3
    expected = sm / (2 * sigma_sm**2) + ce / sigma_ce**2 + math.log(sigma_sm + 1) + math.log(sigma_ce + 1)
    got = ggcam_total(ce, sm, math.log(sigma_ce), math.log(sigma_sm))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    # At the paper's EfficientNet init (sigma_sm = 1.4e-11, sigma_ce = 1) the MSE weight is 1 / (2 sigma_sm^2).
    got = ggcam_total(ce, sm, 0.0, math.log(1.4e-11))
    np.testing.assert_allclose(float(got), sm / (2 * 1.4e-11**2) + ce + 1.4e-11 + math.log(2.0), rtol=1e-5)


# ------------------------------------------------------------------------------------------------------- Eq. 12

def test_interpretability_hit_on_hand_made_maps():
    cam = np.zeros((3, 4, 4, 3), np.float32)
    cam[0, 1, 2, 1] = 5.0  # label 1, peak at cell (1, 2)
    cam[1, 3, 0, 2] = 5.0  # label 2, peak at cell (3, 0)
    cam[2, 0, 0, 1] = 5.0  # label 1 peaks at (0, 0), outside; class 0 peaks inside
    cam[2, 1, 2, 0] = 9.0
    masks = np.zeros((3, 8, 8), bool)  # 2x the CAM grid
    masks[0, 2:4, 4:6] = True  # exactly cell (1, 2)
    masks[1, 0:4, 4:8] = True  # the upper-right quadrant
    masks[2, 2:4, 4:6] = True
    labels = np.array([1, 2, 1])
    hit = interpretability_hit(cam, labels, masks)
    assert hit.dtype == bool and hit.tolist() == [True, False, False]
    per_class = np.zeros((3, 8, 8, 3), bool)
    per_class[np.arange(3), ..., labels] = masks
    assert interpretability_hit(cam, labels, per_class).tolist() == [True, False, False]
    per_class[0, ..., 1] = False  # another class's organ does not count
    per_class[0, ..., 0] = masks[0]
    assert interpretability_hit(cam, labels, per_class).tolist() == [False, False, False]


def test_scale_mask_modes():
    rng = np.random.default_rng(3)
    mask = rng.random((2, 8, 12)) > 0.5
    block_mean = mask.reshape(2, 4, 2, 4, 3).mean(axis=(2, 4))  # integer factors: area = block mean
    np.testing.assert_array_equal(scale_mask(mask, (4, 4), "area"), block_mean >= 0.5)
    np.testing.assert_array_equal(scale_mask(mask, (4, 4), "any"), block_mean > 0)
    # 6 -> 4 pixels per axis: CAM cell 1 spans pixels [1.5, 3), its centre lies in pixel 2.
    one = np.zeros((1, 6, 6), bool)
    one[0, 1, 1] = True  # covers 1/9 of cell (1, 1)
    assert not scale_mask(one, (4, 4), "area")[0, 1, 1] and scale_mask(one, (4, 4), "any")[0, 1, 1]
    assert not scale_mask(one, (4, 4), "nearest")[0, 1, 1]
    two = np.zeros((1, 6, 6), bool)
    two[0, 2, 1:3] = True  # covers 2/3 of cell (1, 1) and its centre pixel (2, 2)
    assert scale_mask(two, (4, 4), "area")[0, 1, 1] and scale_mask(two, (4, 4), "nearest")[0, 1, 1]
    assert scale_mask(two, (4, 4), "area").sum() == 1
    with pytest.raises(ValueError, match="scaling"):
        scale_mask(one, (4, 4), "bilinear")
