"""Grad-CAM against analytic cases: a GAP + linear head gives ReLU(CAM) / (h w); a quadratic head gives the
hand-derived gradient weights; the module-interceptor form equals the head form and the DenseNet encoder's own
"gradcam" output."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.analysis.gradcam import grad_cam, grad_cam_from_head
from gazejax.models.saliency_unet import DenseNetEncoder
from tests.models.params import random_variables

RNG = np.random.default_rng(0)


def test_gap_linear_head_gives_relu_cam_over_area():
    a = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w, b = RNG.normal(size=(5, 3)).astype(np.float32), RNG.normal(size=3).astype(np.float32)
    got = np.asarray(grad_cam_from_head(jnp.asarray(a), lambda f: jnp.mean(f, axis=(1, 2)) @ w + b))
    cam = np.einsum("bhwk,kc->bhwc", a, w)  # Zhou et al.'s CAM
    np.testing.assert_allclose(got, np.maximum(cam, 0) / 12, rtol=1e-5, atol=1e-6)
    one = np.asarray(grad_cam_from_head(jnp.asarray(a), lambda f: jnp.mean(f, axis=(1, 2)) @ w + b,
                                        jnp.array([2, 0])))
    np.testing.assert_allclose(one, got[np.arange(2), ..., [2, 0]], rtol=1e-6)


def test_nonlinear_head_uses_mean_gradient_weights():
    a = RNG.normal(size=(1, 2, 3, 4)).astype(np.float64)
    s, v = RNG.uniform(size=(2, 3)), RNG.normal(size=4)
    # y_0 = sum_ij s_ij (A_ij . v)^2, y_1 = sum A: dy_0/dA_ijk = 2 s_ij (A_ij . v) v_k, dy_1/dA = 1
    head = lambda f: jnp.stack([jnp.sum(s * (f @ v) ** 2, axis=(1, 2)), jnp.sum(f, axis=(1, 2, 3))], -1)  # noqa
    got = np.asarray(grad_cam_from_head(jnp.asarray(a, jnp.float32), head))
    dot = a[0] @ v
    alpha0 = np.mean(2 * s[..., None] * dot[..., None] * v, axis=(0, 1))
    np.testing.assert_allclose(got[0, ..., 0], np.maximum(a[0] @ alpha0, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0, ..., 1], np.maximum(a[0].sum(-1), 0), rtol=1e-5, atol=1e-6)


class _Net(nn.Module):
    """conv -> "feat" (a named conv whose output Grad-CAM reads) -> tanh -> GAP -> Dense."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(6, (3, 3), name="feat")(nn.relu(nn.Conv(4, (3, 3), name="stem")(x)))
        return {"logits": nn.Dense(3, name="head")(jnp.mean(jnp.tanh(h), axis=(1, 2)))}


@pytest.mark.slow
def test_interceptor_form_matches_head_form():
    x = RNG.normal(size=(2, 8, 8, 1)).astype(np.float32)
    net = _Net()
    v = net.init(jax.random.key(0), x)
    feat = nn.Conv(6, (3, 3)).apply({"params": v["params"]["feat"]}, nn.relu(
        nn.Conv(4, (3, 3)).apply({"params": v["params"]["stem"]}, x)))
    head = lambda f: nn.Dense(3).apply({"params": v["params"]["head"]}, jnp.mean(jnp.tanh(f), axis=(1, 2)))  # noqa
    target = np.asarray(jnp.argmax(net.apply(v, x)["logits"], -1))
    want = np.asarray(grad_cam_from_head(feat, head))[np.arange(2), ..., target]
    np.testing.assert_allclose(np.asarray(grad_cam(net, v, (x,), "feat")), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_cam(net, v, (x,), ("feat",), class_index=np.array([1, 1]))),
                               np.asarray(grad_cam_from_head(feat, head))[..., 1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no submodule"):
        grad_cam(net, v, (x,), "features/transition3")


@pytest.mark.slow
def test_densenet_encoder_gradcam_output_equals_interceptor_gradcam(fast_compile):
    model = DenseNetEncoder(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8)
    x = RNG.uniform(size=(2, 64, 64, 1)).astype(np.float32)
    v = random_variables(jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x))  # no initialiser to compile
    out = jax.jit(model.apply)(v, x)
    labels = np.array([0, 2])
    generic = grad_cam(model, v, (x,), "features/norm5", class_index=labels, output_key="dnet_logits")
    np.testing.assert_allclose(np.asarray(generic), np.asarray(out["gradcam"])[np.arange(2), ..., labels],
                               rtol=1e-4, atol=1e-6)
    assert np.asarray(out["gradcam"]).min() >= 0 and np.asarray(out["gradcam"]).max() > 0
