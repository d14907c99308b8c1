"""SANAABClassifier (Huang et al., Sec. 4.2): output shapes and parameter trees per method, the AAB on E4's 1/32
grid with SAN's finer 1/16 M2 max-pooled onto it, and +gaze*'s gaze-weighted pooling at inference."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax.models.aab import AAB
from gazejax.models.classifier2d import METHODS, SANAABClassifier, gaze_attention_pool, gaze_stride
from gazejax.models.layers import max_pool

TINY = {"width_mult": 0.25, "depth_mult": 0.25, "in_channels": 1}  # EfficientNet-b0, final_conv 320 channels
X = jax.ShapeDtypeStruct((2, 64, 64, 1), jnp.float32)
GAZE_SHAPES = {"backbone": None, "ours": (2, 4, 4, 1), "gaze_star": (2, 2, 2, 1), "gaze_loss": (2, 2, 2, 1)}
EXTRA_PARAMS = {"backbone": [], "ours": ["aab", "san"], "gaze_star": ["gaze_head"], "gaze_loss": ["gaze_head"]}


def _tiny(method: str, **kwargs) -> SANAABClassifier:
    return SANAABClassifier(method=method, backbone_kwargs=TINY, san_width=4, aab_heads=2, aab_head_dim=4, **kwargs)


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


@pytest.mark.parametrize("method", METHODS)
def test_output_shapes_and_parameter_trees(method):
    out, variables = jax.eval_shape(_tiny(method).init_with_output, jax.random.key(0), X)
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    if GAZE_SHAPES[method] is None:
        assert out["gaze"] is None and gaze_stride(method) is None
    else:
        assert out["gaze"].shape == GAZE_SHAPES[method]
        assert out["gaze"].shape[1] == 64 // gaze_stride(method)
    params = variables["params"]
    assert sorted(params) == sorted(["backbone", "classifier", *EXTRA_PARAMS[method]])
    # The classification path is the same network in every method; the head reads E4 = final_conv (320 ch).
    _, base = jax.eval_shape(_tiny("backbone").init_with_output, jax.random.key(0), X)
    assert _shapes(params["backbone"]) == _shapes(base["params"]["backbone"])
    assert _shapes(params["classifier"]) == {"kernel": (320, 5), "bias": (5,)}


def test_ours_aab_runs_on_e4_grid_with_san_pooled():
    """M2 (1/16) is twice as fine as E4 (1/32); E4' keeps E4's shape, the head reads E4' (the "head_map" site, the
    1280-channel final_conv; the default "stride32" site is tested in tests/methods/cxr_san/test_aab_site.py)."""
    model = _tiny("ours", aab_site="head_map")

    def run(x):
        variables = model.init(jax.random.key(0), x)
        return model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])[1]

    inter = jax.eval_shape(run, X)["intermediates"]
    e4 = inter["backbone"]["__call__"][0]["features"]["final_conv"]
    m2, gaze = inter["san"]["__call__"][0]
    refined = inter["aab"]["__call__"][0]
    assert e4.shape == (2, 2, 2, 320) and m2.shape == (2, 4, 4, 8) and gaze.shape == (2, 4, 4, 1)
    assert refined.shape == e4.shape


@pytest.mark.slow
def test_aab_attends_to_the_max_pooled_finer_m2():
    """The AAB's attention grid is E4's: feeding M2 at 1/16 equals feeding its 2x2 max-pool (same params)."""
    rng = np.random.default_rng(0)
    e4 = jnp.asarray(rng.normal(size=(1, 2, 3, 8)), jnp.float32)
    m2 = jnp.asarray(rng.normal(size=(1, 4, 6, 6)), jnp.float32)
    aab = AAB(num_heads=2, head_dim=4)
    variables = aab.init(jax.random.key(0), e4, m2)
    fine = np.asarray(aab.apply(variables, e4, m2))
    np.testing.assert_allclose(fine, aab.apply(variables, e4, max_pool(m2, 2)), rtol=1e-6, atol=1e-6)
    mean_pooled = m2.reshape(1, 2, 2, 3, 2, 6).mean(axis=(2, 4))
    assert not np.allclose(fine, aab.apply(variables, e4, mean_pooled), atol=1e-4)


def test_gaze_attention_pool():
    e4 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 2, 3)), jnp.float32)
    flat = np.asarray(e4).reshape(2, 4, 3)
    np.testing.assert_allclose(gaze_attention_pool(e4, jnp.zeros((2, 2, 2, 1))), flat.mean(axis=1), rtol=1e-6)
    logits = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    g = 1.0 / (1.0 + np.exp(-logits))
    expected = (g[:, None] * flat[0]).sum(axis=0) / g.sum()
    got = gaze_attention_pool(e4[:1], jnp.asarray(logits.reshape(1, 2, 2, 1)))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    extreme = gaze_attention_pool(e4, jnp.full((2, 2, 2, 1), -300.0))  # sigmoid underflows; ratio does not
    np.testing.assert_allclose(extreme, flat.mean(axis=1), rtol=1e-5)


def test_gaze_star_pools_with_predicted_gaze_at_inference():
    """One tiny compiled forward: train=False logits = Dense(gaze_attention_pool(E4, gaze head)).

    ResNet-18 here (E4 = layer4): the tiny EfficientNet's eval-mode activations at init are ~1e-11 (torchvision's
    fan-out init of depthwise convs), which would make any pooling look alike.
    """
    model = SANAABClassifier(backbone="resnet18", method="gaze_star", backbone_kwargs={"width": 4, "in_channels": 1},
                             gaze_head_std=0.0)  # kaiming: a clearly non-uniform gaze map at init
    x = jnp.asarray(np.random.default_rng(2).random((2, 64, 64, 1)), jnp.float32)
    variables = model.init(jax.random.key(0, impl="rbg"), x)
    params = dict(variables["params"])
    params["gaze_head"] = jax.tree.map(lambda p: 10.0 * p, params["gaze_head"])  # clearly non-uniform gaze
    variables = {**variables, "params": params}
    out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    e4 = np.asarray(state["intermediates"]["backbone"]["__call__"][0]["features"]["layer4"])
    weights = jax.nn.softmax(jax.nn.log_sigmoid(out["gaze"]).reshape(2, -1), axis=1)
    assert e4.shape == (2, 2, 2, 32) and float(jnp.max(weights) - jnp.min(weights)) > 0.05
    head = variables["params"]["classifier"]
    pooled = np.asarray(gaze_attention_pool(jnp.asarray(e4), out["gaze"]))
    np.testing.assert_allclose(out["logits"], pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                               rtol=1e-4, atol=1e-5)
    gap_logits = e4.mean(axis=(1, 2)) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    assert not np.allclose(out["logits"], gap_logits, atol=1e-4)  # the gaze really re-weights the pooling


@pytest.mark.parametrize("std,want", [(None, 0.01), (0.0, np.sqrt(2.0))])  # None: configs/cxr_san.py's default
def test_gaze_head_starts_small_unless_asked_for_kaiming(std, want):
    """RetinaNet's init of a prediction head that shares its features: normal(0, 0.01), not kaiming fan_out."""
    from configs import cxr_san
    from gazejax.methods.cxr_san import spec

    cfg = cxr_san.get_config("method=gaze_star,backbone=resnet18")
    cfg.model.resnet_width = 4  # a tiny layer4: 32 channels
    if std is not None:
        cfg.model.gaze_head_std = std
    model = spec.build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))["params"]
    kernel = np.asarray(params["gaze_head"]["kernel"]).ravel()
    assert np.sqrt(np.mean(kernel**2)) == pytest.approx(want, rel=0.4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        jax.eval_shape(SANAABClassifier(method="gaze").init, jax.random.key(0), X)
    odd = jax.ShapeDtypeStruct((2, 48, 48, 1), jnp.float32)
    with pytest.raises(ValueError, match="divisible by 32"):
        jax.eval_shape(_tiny("ours").init, jax.random.key(0), odd)
    out = jax.eval_shape(_tiny("backbone").init_with_output, jax.random.key(0), odd)[0]
    assert out["logits"].shape == (2, 5)


def test_aab_ffn_width_follows_aab_ffn_mult():
    """At the "head_map" site the AAB sits on E4 = final_conv (320 channels here): its FFN is aab_ffn_mult x 320."""
    for mult in (1, 2):
        model = SANAABClassifier(method="ours", backbone_kwargs=TINY, san_width=4, aab_heads=2, aab_head_dim=4,
                                 aab_ffn_mult=mult, aab_site="head_map")
        aab = jax.eval_shape(model.init, jax.random.key(0), X)["params"]["aab"]
        assert aab["ffn1"]["kernel"].shape == (320, 320 * mult) and aab["ffn2"]["kernel"].shape == (320 * mult, 320)
