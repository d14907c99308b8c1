"""Tests of the Table 3 models (nnU-Net, DMFNet, CBAM, TASN-style attention) and GazeSegmenter's `backbone`:
shapes and parameter trees via jax.eval_shape, parameter counts against analytic transcriptions of the reference
structures, the attention equations against numpy/scipy, and two tiny compiled forward passes."""
from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from gazejax.models import build
from gazejax.models.attention3d import ChannelAttention, SpatialAttention, TrilinearAttention, trilinear_attention
from gazejax.models.dmfnet import DMFNetEncoder, fiber_groups, upsample_half_pixel
from gazejax.models import nnunet3d
from gazejax.models.nnunet3d import NNUNetEncoder, he_normal_transposed, stage_widths
from gazejax.models.segmenter import ATTENTION_METHODS, BACKBONES
from gazejax.models.unet3d import EquiUnetEncoder

X = jax.ShapeDtypeStruct((1, 32, 32, 32, 4), jnp.float32)
TINY_WIDTH = {"equiunet": 4, "nnunet": 4, "dmfnet": 16}  # DMFNet: c = 16, n = 4, 4 fibres
SAN_TINY = dict(san_width=4, aab_heads=2, aab_head_dim=8)
DEEP_OUTPUTS = {"equiunet": 4, "nnunet": 2, "dmfnet": 3}


def _segmenter(backbone: str, method: str, **kw):
    return build("gaze_segmenter", backbone=backbone, method=method, width=TINY_WIDTH[backbone], **SAN_TINY, **kw)


def _init_shapes(model, x=X) -> dict:
    return jax.eval_shape(model.init, jax.random.key(0), x)


def _flat(variables) -> dict:
    return {k: v.shape for k, v in flax.traverse_util.flatten_dict(variables["params"], sep="/").items()}


def _count(variables) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables["params"]))


def _random_variables(model, x, seed=0) -> dict:
    """Random float32 values with `model.init`'s tree (no compiled init): kernels scaled by fan-in, norms near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "var":
            return np.ones(leaf.shape, np.float32)
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        return (float(name in ("scale", "weight1", "weight2", "weight3")) + 0.1 * rng.standard_normal(leaf.shape)
                ).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, _init_shapes(model, x))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---------------------------------------------------------------------------------------- backbones x methods


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", ["backbone", "ours"])
def test_output_shapes_per_backbone(backbone, method):
    model = _segmenter(backbone, method, deep_supervision=True)
    out = jax.eval_shape(model.apply, _init_shapes(model), X)
    assert set(out) == {"seg", "deep", "gaze", "survival"}
    chex.assert_shape(out["seg"], (1, 32, 32, 32, 3))
    assert len(out["deep"]) == DEEP_OUTPUTS[backbone]
    chex.assert_shape(out["deep"], (1, 32, 32, 32, 3))
    assert {a.dtype for a in [out["seg"], *out["deep"]]} == {jnp.dtype(jnp.float32)}
    if method == "backbone":
        assert out["gaze"] is None
    else:
        chex.assert_shape(out["gaze"], (1, 2, 2, 2, 1))


@pytest.mark.parametrize("encoder, channels", [
    (EquiUnetEncoder(width=4), 32), (NNUNetEncoder(width=4), 32), (DMFNetEncoder(width=16), 32)])
def test_e4_is_the_one_eighth_feature(encoder, channels):
    x = jax.ShapeDtypeStruct((2, 32, 16, 48, 4), jnp.float32)
    features = jax.eval_shape(encoder.apply, _init_shapes(encoder, x), x)
    chex.assert_shape(features[-1], (2, 4, 2, 6, channels))


@pytest.mark.parametrize("backbone", ["nnunet", "dmfnet"])
def test_ours_adds_exactly_san_and_aab(backbone):
    base = _flat(_init_shapes(_segmenter(backbone, "backbone")))
    ours = _flat(_init_shapes(_segmenter(backbone, "ours")))
    assert all(ours[k] == shape for k, shape in base.items())
    extra = {k.split("/")[0] for k in set(ours) - set(base)}
    assert extra == {"san", "aab"}
    # AAB's output projection maps back to E4's width: 8 * base for nnU-Net, 2c for DMFNet
    assert ours["aab/out/kernel"] == (2 * 8, 32)


@pytest.mark.parametrize("name, backbone", [("nnunet3d", "nnunet"), ("dmfnet", "dmfnet")])
def test_standalone_model_has_the_segmenter_backbone_tree(name, backbone):
    w = TINY_WIDTH[backbone]
    alone = _init_shapes(build(name, width=w, deep_supervision=True))
    inside = _init_shapes(_segmenter(backbone, "backbone", deep_supervision=True))
    assert _flat(alone) == _flat(inside)
    out = jax.eval_shape(build(name, width=w).apply, alone, X)
    assert set(out) == {"seg", "deep"} and out["seg"].shape == (1, 32, 32, 32, 3)


# ------------------------------------------------------------------------------------------------- nnU-Net


def _nnunet_param_count(base: int, stages: int, c_in: int, k: int) -> int:
    """Analytic count: conv3 with bias, affine InstanceNorm, kernel-2 transposed convs with bias, 1x1 head."""
    w = [min(base * 2**s, 320) for s in range(stages)]
    cnl = lambda ci, co: 27 * ci * co + co + 2 * co  # noqa: E731
    total = cnl(c_in, w[0]) + cnl(w[0], w[0]) + sum(cnl(w[s - 1], w[s]) + cnl(w[s], w[s]) for s in range(1, stages))
    for s in range(stages - 1):
        total += 8 * w[s + 1] * w[s] + w[s] + cnl(2 * w[s], w[s]) + cnl(w[s], w[s])
    return total + w[0] * k + k


@pytest.mark.parametrize("stages", [5, 6])
def test_nnunet_param_count_and_width_cap(stages):
    assert stage_widths(32, 6) == (32, 64, 128, 256, 320, 320)
    model = build("nnunet3d", num_classes=3, width=32, in_channels=4, num_stages=stages)
    variables = _init_shapes(model, jax.ShapeDtypeStruct((1, 32, 32, 32, 4), jnp.float32))
    assert _count(variables) == _nnunet_param_count(32, stages, 4, 3)
    flat = _flat(variables)
    assert flat["decoder/transp0/kernel"] == (2, 2, 2, 320, 256 if stages == 5 else 320)
    assert flat["encoder/stage1/convs_0/norm/scale"] == (64,)


def test_nnunet_transposed_init_uses_torch_fan_in():
    # torch's fan_in of a ConvTranspose3d(320 -> 256, k=2) weight is 256 * 8 (its dim 1), not 320 * 8
    kernel = he_normal_transposed(jax.random.key(0), (2, 2, 2, 320, 256), jnp.float32)
    np.testing.assert_allclose(np.std(np.asarray(kernel)), np.sqrt(2 / (1 + 1e-4) / (256 * 8)), rtol=0.02)


@pytest.mark.parametrize("shape, dtype", [((2, 3, 4, 5, 3), jnp.float32), ((2, 5, 3, 6), jnp.float32),
                                          ((1, 2, 3, 2, 4), jnp.bfloat16)])
def test_block_conv_transpose_is_flax_conv_transpose(shape, dtype):
    """The matmul + depth-to-space transposed conv has nn.ConvTranspose's parameters (same names, shapes, init) and
    its outputs and gradients (input and parameters), 2D and 3D, float32 and bfloat16 compute."""
    x = jax.random.normal(jax.random.key(1), shape)
    n = len(shape) - 2
    ours = nnunet3d._conv(5, n, 2, 2, dtype, "up", transposed=True, conv_impl="onednn")
    flax_ = nnunet3d._conv(5, n, 2, 2, dtype, "up", transposed=True, conv_impl="xla")
    assert isinstance(ours, nnunet3d.BlockConvTranspose) and isinstance(flax_, flax.linen.ConvTranspose)
    p_ours, p_flax = ours.init(jax.random.key(0), x), flax_.init(jax.random.key(0), x)
    chex.assert_trees_all_equal(p_ours, p_flax)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), p_flax)  # bias != 0
    y = flax_.apply(params, x)
    assert y.shape == (shape[0], *(2 * s for s in shape[1:-1]), 5) and y.dtype == dtype
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.float32(ours.apply(params, x)), np.float32(y), atol=tol, rtol=tol)
    g = jax.random.normal(jax.random.key(3), y.shape)

    def grads(model):
        return jax.grad(lambda p, a: jnp.sum(model.apply(p, a).astype(jnp.float32) * g), argnums=(0, 1))(params, x)

    for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(flax_))):
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=20 * tol, rtol=tol)


def test_nnunet_needs_16_divisible_input_even_as_backbone():
    bad = jax.ShapeDtypeStruct((1, 8, 32, 32, 4), jnp.float32)
    _init_shapes(_segmenter("equiunet", "backbone"), bad)
    with pytest.raises(ValueError, match="divisible by 16"):
        _init_shapes(_segmenter("nnunet", "backbone"), bad)


# -------------------------------------------------------------------------------------------------- DMFNet


def _dmfnet_reference_count(c_in=4, n=32, ch=128, g=16, k=4, mult=3) -> int:
    """Parameter count of the published torch DMFNet (BatchNorm), transcribed unit by unit."""

    def unit(ci, co, stride, dmf=False):
        mid = min(ci, co)
        p = 2 * ci + ci * (ci // 4) + 2 * (ci // 4) + (ci // 4) * mid  # two pre-activated 1x1x1 convs
        m1 = 2 * mid + 27 * (mid // g) * co
        p += 3 * m1 + 3 if dmf else m1  # three dilated branches + their weights
        p += 2 * co + 9 * (co // g) * co  # 3x3x1
        if ci != co or stride != 1:
            p += 2 * ci + (1 if stride == 1 else 8) * ci * co
        return p

    p = 27 * c_in * n + n * k
    for ci, co, dmf in ((n, ch, True), (ch, 2 * ch, True), (2 * ch, mult * ch, False)):
        p += unit(ci, co, 2, dmf) + unit(co, co, 1, dmf) + unit(co, co if dmf else 2 * ch, 1, dmf)
    return p + unit(4 * ch, 2 * ch, 1) + unit(3 * ch, ch, 1) + unit(ch + n, n, 1)


def test_dmfnet_param_count_is_the_papers():
    variables = _init_shapes(build("dmfnet", num_classes=4, width=128), jax.ShapeDtypeStruct((1, 16, 16, 16, 4),
                                                                                          jnp.float32))
    assert _count(variables) == _dmfnet_reference_count() == 3_875_890  # "3.88M" in the paper and code
    assert set(variables) == {"params", "batch_stats"}
    flat = _flat(variables)
    # grouped 3x3x3 of the first DMF unit: mid = 32 inputs in 16 fibres of 2, 128 outputs; dilation branches x3
    assert flat["encoder/encoder_block2_0/conv3x3x3_m1_2/conv/kernel"] == (3, 3, 3, 2, 128)
    assert flat["encoder/encoder_block2_0/weight3"] == (1,)
    assert flat["decoder/encoder_block4_0/conv3x3x3_m2/conv/kernel"] == (3, 3, 1, 24, 384)
    assert flat["decoder/encoder_block4_0/conv2x2x2_shortcut/conv/kernel"] == (2, 2, 2, 256, 384)
    assert not any("weight" in k for k in flat if k.startswith("decoder/"))  # block4 and decoder: plain MF units


def test_fiber_groups_scale_down():
    assert fiber_groups(32, 128, 16) == 16
    assert fiber_groups(4, 16, 16) == 4
    assert fiber_groups(6, 24, 16) == 2
    flat = _flat(_init_shapes(_segmenter("dmfnet", "backbone")))
    assert flat["encoder/encoder_block2_0/conv3x3x3_m1_0/conv/kernel"] == (3, 3, 3, 1, 16)  # n=4 in 4 fibres


def test_half_pixel_upsampling_hand_values_and_errors():
    x = jnp.asarray([0.0, 1.0, 3.0]).reshape(1, 3, 1)
    # torch align_corners=False: sources (i + 0.5) / 2 - 0.5 clamped to [0, 2]
    np.testing.assert_allclose(upsample_half_pixel(x)[0, :, 0], [0, 0.25, 0.75, 1.5, 2.5, 3], atol=1e-6)
    with pytest.raises(ValueError, match="dmfnet.py.*3D"):
        _init_shapes(DMFNetEncoder(width=16), jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32))
    with pytest.raises(ValueError, match="unknown norm"):
        _init_shapes(_segmenter("dmfnet", "backbone", norm="ln"))


# ---------------------------------------------------------------------------------------------- attention


def test_cbam_channel_attention_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5, 32)).astype(np.float32)
    params = {"fc1": {"kernel": rng.standard_normal((32, 2)), "bias": rng.standard_normal(2)},
              "fc2": {"kernel": rng.standard_normal((2, 32)), "bias": rng.standard_normal(32)}}
    got = ChannelAttention(reduction=16).apply({"params": params}, jnp.asarray(x))
    fc1, fc2 = params["fc1"], params["fc2"]
    mlp = lambda v: np.maximum(v @ fc1["kernel"] + fc1["bias"], 0) @ fc2["kernel"] + fc2["bias"]  # noqa: E731
    xd = x.astype(np.float64)
    weights = _sigmoid(mlp(xd.mean((1, 2, 3))) + mlp(xd.max((1, 2, 3))))
    np.testing.assert_allclose(got, xd * weights[:, None, None, None, :], rtol=1e-4, atol=1e-5)


def test_cbam_spatial_attention_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 5, 7, 3)).astype(np.float32)
    kernel = rng.standard_normal((7, 7, 7, 2, 1)).astype(np.float32) * 0.1
    params = {"conv": {"kernel": kernel}, "bn": {"scale": np.array([1.7], np.float32), "bias": np.array([-0.3],
                                                                                                        np.float32)}}
    out, logits = SpatialAttention().apply({"params": params}, jnp.asarray(x))
    xd = x[0].astype(np.float64)
    pooled = [xd.mean(-1), xd.max(-1)]  # [avg, max] as Eq. 3 of Woo et al.
    raw = sum(scipy.ndimage.correlate(pooled[c], kernel[..., c, 0].astype(np.float64), mode="constant")
              for c in range(2))
    ref_logits = (raw - raw.mean()) / np.sqrt(raw.var() + 1e-5) * 1.7 - 0.3
    np.testing.assert_allclose(logits[0, ..., 0], ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[0], xd * _sigmoid(ref_logits)[..., None], rtol=1e-4, atol=1e-4)


def _softmax(z, axis):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _trilinear_numpy(x):
    """M(X) = N(N(X) X^T) X per sample with X = [C, N] (Zheng et al. 2019), float64."""
    out = []
    for sample in x:
        xm = sample.reshape(-1, sample.shape[-1]).T.astype(np.float64)  # [C, N]
        out.append((_softmax(_softmax(xm, 1) @ xm.T, 1) @ xm).T.reshape(sample.shape))
    return np.stack(out)


def test_trilinear_attention_matches_numpy():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 2, 5)).astype(np.float32)
    np.testing.assert_allclose(trilinear_attention(jnp.asarray(x)), _trilinear_numpy(x), rtol=1e-4, atol=1e-5)


def test_tasn_maps_structure_mean_and_detail_selection():
    x = np.random.default_rng(4).standard_normal((2, 4, 4, 4, 8)).astype(np.float32)
    module = TrilinearAttention()
    variables = _random_variables(module, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    maps = _trilinear_numpy(x)

    def standardise(a, norm):  # GroupNorm with one group on a one-channel map
        axes = tuple(range(1, a.ndim))
        z = (a - a.mean(axes, keepdims=True)) / np.sqrt(a.var(axes, keepdims=True) + 1e-5)
        return z * np.asarray(norm["scale"]) + np.asarray(norm["bias"])

    p = variables["params"]
    _, logits_s, logits_d = module.apply(variables, jnp.asarray(x), train=False)
    np.testing.assert_allclose(logits_s, standardise(maps.mean(-1, keepdims=True), p["structure_norm"]), atol=1e-3)
    peak = maps.reshape(2, -1, 8).max(1).argmax(-1)  # evaluation: the channel whose map peaks highest
    detail = np.stack([maps[b, ..., peak[b]] for b in range(2)])[..., None]
    np.testing.assert_allclose(logits_d, standardise(detail, p["detail_norm"]), atol=1e-3)
    # training with a "dropout" rng: some channel's map, drawn at random
    _, _, trained = module.apply(variables, jnp.asarray(x), train=True, rngs={"dropout": jax.random.key(7)})
    candidates = [standardise(maps[..., c : c + 1], p["detail_norm"]) for c in range(8)]
    assert all(any(np.allclose(trained[b], cand[b], atol=1e-3) for cand in candidates) for b in range(2))


@pytest.mark.slow
@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_attention_methods_give_gaze_grid_maps(method):
    model = _segmenter("equiunet", method, deep_supervision=True, survival_classes=3)
    variables = _init_shapes(model)
    out = jax.eval_shape(model.apply, variables, X)
    assert set(out) == {"seg", "deep", "gaze", "gaze_extra", "survival"}
    chex.assert_shape([out["gaze"], *out["gaze_extra"]], (1, 2, 2, 2, 1))
    assert len(out["gaze_extra"]) == {"cbam": 0, "tasn": 1}[method]
    base = _flat(_init_shapes(_segmenter("equiunet", "backbone", deep_supervision=True, survival_classes=3)))
    flat = _flat(variables)
    assert all(flat[k] == s for k, s in base.items())
    extra = {"/".join(k.split("/")[:2]) for k in set(flat) - set(base)}
    if method == "cbam":  # Att_EquiUnet: after encoder1..4, bottom and bottom_2
        assert extra == {f"encoder/cbam{i}" for i in range(1, 5)} | {"decoder/cbam_bottom", "decoder/cbam_bottom_2"}
        assert flat["encoder/cbam4/SpatialGate/conv/kernel"] == (7, 7, 7, 2, 1)
        assert flat["encoder/cbam4/ChannelGate/fc1/kernel"] == (32, 2)  # 32 // 16
    else:
        assert extra == {"tasn/structure_norm", "tasn/detail_norm", "tasn/fuse"}
        on_nnunet = _segmenter("nnunet", "tasn")  # TASN refines E4, so it runs on any backbone
        chex.assert_shape(jax.eval_shape(on_nnunet.apply, _init_shapes(on_nnunet), X)["gaze_extra"], (1, 2, 2, 2, 1))


def test_bad_backbone_combinations():
    with pytest.raises(ValueError, match="unknown backbone"):
        _init_shapes(build("gaze_segmenter", backbone="resnet", width=4))
    with pytest.raises(ValueError, match="cbam.*equiunet"):
        _init_shapes(build("gaze_segmenter", backbone="nnunet", method="cbam", width=4))
    with pytest.raises(ValueError, match="norm.*dmfnet"):
        _init_shapes(build("gaze_segmenter", backbone="nnunet", norm="gn", width=4))


# ------------------------------------------------------------------------------------ compiled tiny forward passes


@pytest.mark.slow
def test_dmfnet_ours_train_step_updates_batch_stats():
    model = _segmenter("dmfnet", "ours", survival_classes=3)
    x = jax.random.uniform(jax.random.key(1), X.shape)
    variables = _random_variables(model, x)
    out, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    for leaf in jax.tree_util.tree_leaves(out):
        assert np.isfinite(np.asarray(leaf)).all()
    path = ("encoder", "encoder_block2_0", "conv1x1x1_in1", "bn", "mean")
    old, new = variables["batch_stats"], state["batch_stats"]
    for key in path:
        old, new = old[key], new[key]
    assert not np.allclose(new, old)  # the running mean moved toward the stem output's batch mean


@pytest.mark.slow
def test_cbam_gaze_is_pooled_encoder4_spatial_logits():
    model = _segmenter("equiunet", "cbam")
    x = jax.random.uniform(jax.random.key(2), X.shape)
    variables = _random_variables(model, x)

    def run(v, x):
        return model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])

    out, state = jax.jit(run)(variables, x)
    _, logits4 = state["intermediates"]["encoder"]["cbam4"]["SpatialGate"]["__call__"][0]
    chex.assert_shape(logits4, (1, 4, 4, 4, 1))  # encoder4: 1/8 of 32
    pooled = np.asarray(logits4)[0, ..., 0].reshape(2, 2, 2, 2, 2, 2).mean((1, 3, 5))
    np.testing.assert_allclose(out["gaze"][0, ..., 0], pooled, rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(out["seg"])).all() and out["gaze_extra"] == []
