"""Tests of the BraTS models (layers, EquiUnet, SAN, AAB, GazeSegmenter) against hand-computed values, scipy and a
direct numpy implementation of the AAB equations; shapes and parameter counts via jax.eval_shape (no compile)."""
from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from gazejax.models import build
from gazejax.models.aab import AAB, positional_encoding
from gazejax.models.layers import (ConvNormAct, group_norm, max_pool, max_pool_window, num_groups,
                                   resize_align_corners, upsample_linear)
from gazejax.models.san import SAN
from gazejax.models.segmenter import METHODS, gaze_modulated_logits

TINY = dict(width=4, san_width=4, aab_heads=2, aab_head_dim=8)
X_TINY = jax.ShapeDtypeStruct((1, 16, 32, 32, 4), jnp.float32)


def _init_key() -> jax.Array:
    """Key for real (compiled) inits: XLA:CPU compiles partitionable threefry very slowly (minutes for a U-Net's
    ~50 initialisers on 2 cores), the RngBitGenerator-based "rbg" key in seconds; the values do not matter."""
    return jax.random.key(0, impl="rbg")


def _random_variables(model, x) -> dict:
    """Random float32 parameters with `model.init`'s tree, without compiling init (tests only need any values)."""
    rng = np.random.default_rng(4)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("kernel",):
            return rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
        return (float(name == "scale") + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: a.shape, tree)


def _flat_params(variables) -> dict:
    return flax.traverse_util.flatten_dict(variables["params"], sep="/")


# ----------------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("impl", ("xla", "onednn"))
def test_align_corners_hand_1d_and_2d(impl):
    x = jnp.asarray([0.0, 1.0, 3.0]).reshape(1, 3, 1)
    # sources i * 2/5 = 0, .4, .8, 1.2, 1.6, 2
    np.testing.assert_allclose(upsample_linear(x, 2, impl)[0, :, 0], [0, 0.4, 0.8, 1.4, 2.2, 3], atol=1e-6)
    x2 = jnp.asarray([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 2, 2, 1)
    expected = np.array(
        [[0, 1 / 3, 2 / 3, 1], [2 / 3, 1, 4 / 3, 5 / 3], [4 / 3, 5 / 3, 2, 7 / 3], [2, 7 / 3, 8 / 3, 3]]
    )
    np.testing.assert_allclose(upsample_linear(x2, 2, impl)[0, :, :, 0], expected, atol=1e-6)


@pytest.mark.parametrize("matmul", (False, True))
@pytest.mark.parametrize("out_size", [(10, 8, 12), (7, 9, 3)])
def test_align_corners_matches_scipy_zoom(out_size, matmul):
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((5, 4, 6)).astype(np.float32)
    zoom = [o / i for o, i in zip(out_size, vol.shape)]
    ref = scipy.ndimage.zoom(vol.astype(np.float64), zoom, order=1, grid_mode=False, mode="nearest")
    assert ref.shape == out_size
    got = resize_align_corners(jnp.asarray(vol)[None, ..., None], out_size, matmul)[0, ..., 0]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_align_corners_matmul_gradient_matches_gathers():
    """The matrix form's gradient (a product with the transposed matrix) equals the gathers' scatter-add."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 4, 2))
    c = jax.random.normal(jax.random.key(1), (2, 6, 10, 8, 2))
    grads = [jax.grad(lambda a, m=m: jnp.sum(resize_align_corners(a, (6, 10, 8), m) * c))(x) for m in (False, True)]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_init_is_torch_kaiming_fan_out_and_default_bias():
    block, head = ConvNormAct(64), SAN(width=4)
    v = jax.jit(block.init)(_init_key(), jnp.zeros((1, 4, 4, 4, 32)))["params"]
    kernel = np.asarray(v["conv"]["kernel"])
    assert kernel.shape == (3, 3, 3, 32, 64)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (64 * 27)), rtol=0.03)
    np.testing.assert_array_equal(v["bn"]["scale"], 1.0)
    np.testing.assert_array_equal(v["bn"]["bias"], 0.0)
    gaze_bias = jax.jit(head.init)(_init_key(), jnp.zeros((1, 16, 16, 16, 4)))["params"]["gaze_head"]["bias"]
    assert abs(float(gaze_bias[0])) <= 1 / np.sqrt(8)  # torch default U(+-1/sqrt(fan_in)), fan_in = 8 channels


def test_group_norm_matches_numpy_and_torch_group_rule():
    assert [num_groups(c) for c in (4, 8, 48, 384, 24)] == [4, 8, 16, 16, 3]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5, 32)).astype(np.float32) * 3 + 1
    scale, bias = rng.standard_normal(32), rng.standard_normal(32)
    got = group_norm(32).apply({"params": {"scale": scale, "bias": bias}}, jnp.asarray(x))
    g = x.astype(np.float64).reshape(2, -1, 16, 2)  # 16 groups of 2 adjacent channels, as torch
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    ref = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
    np.testing.assert_allclose(got, ref, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- EquiUnet


def _equiunet_param_count(w: int, c_in: int, k: int, deep: bool) -> int:
    """Analytic count from REFERENCE_NOTES: conv3 bias-free (27 ci co), GroupNorm (2 co), 1x1 heads with bias."""
    cnr = lambda ci, co: 27 * ci * co + 2 * co  # noqa: E731
    ublock = lambda ci, mid, co: cnr(ci, mid) + cnr(mid, co)  # noqa: E731
    f = [w, 2 * w, 4 * w, 8 * w]
    total = ublock(c_in, f[0], f[0]) + ublock(f[0], f[1], f[1]) + ublock(f[1], f[2], f[2]) + ublock(f[2], f[3], f[3])
    total += ublock(f[3], f[3], f[3]) + cnr(2 * f[3], f[2])  # bottom, bottom_2
    total += ublock(2 * f[2], f[2], f[1]) + ublock(2 * f[1], f[1], f[0]) + ublock(2 * f[0], f[0], f[0])
    total += f[0] * k + k  # outconv
    if deep:
        total += sum(c * k + k for c in (f[3], f[2], f[1], f[0]))
    return total


def _numpy_max_pool_and_grad(x: np.ndarray, w: tuple[int, ...], g: np.ndarray):
    """Pooled values and the gradient of sum(pooled * g), sent to each window's first maximum (row-major)."""
    y, dx = np.zeros(g.shape, x.dtype), np.zeros_like(x)
    for b, *o, c in np.ndindex(*g.shape):
        corner = tuple(i * k for i, k in zip(o, w))
        window = x[(b, *(slice(s, s + k) for s, k in zip(corner, w)), c)]
        first = np.unravel_index(np.argmax(window), w)  # argmax: the first maximum in row-major order
        y[(b, *o, c)] = window[first]
        dx[(b, *(s + f for s, f in zip(corner, first)), c)] += g[(b, *o, c)]
    return y, dx


@pytest.mark.parametrize("shape,factor", [((2, 5, 6, 7, 3), 2), ((2, 7, 5, 3), (3, 2))])
def test_max_pool_values_and_first_max_gradient(shape, factor):
    """Against numpy (ties from quantised inputs, remainders cropped) and lax's reduce-window pooling; on CPU the
    pooling is the reshape-and-max formulation (no reduce-window in forward or gradient)."""
    x = np.round(np.random.default_rng(0).normal(size=shape) * 2).astype(np.float32) / 2  # many ties
    w = (factor,) * (len(shape) - 2) if isinstance(factor, int) else factor
    g = np.random.default_rng(1).normal(size=(shape[0], *[s // k for s, k in zip(shape[1:-1], w)], shape[-1]))
    y_ref, dx_ref = _numpy_max_pool_and_grad(x, w, g.astype(np.float32))
    y, vjp = jax.vjp(lambda t: max_pool(t, factor), jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], dx_ref, rtol=1e-6)
    lax_dx = jax.vjp(lambda t: flax.linen.max_pool(t, w, strides=w), jnp.asarray(x))[1](jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], lax_dx[0], rtol=1e-6)
    hlo = jax.jit(jax.value_and_grad(lambda t: max_pool(t, factor).sum())).lower(jnp.asarray(x)).as_text()
    assert jax.default_backend() != "cpu" or not ("reduce_window" in hlo or "select_and_scatter" in hlo)


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 10, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 7, 6, 5, 2), (3, 2, 3), (2, 1, 2), ((1, 0), (0, 1), (2, 1)))])
def test_max_pool_window_overlapping_values_and_first_max_gradient(shape, window, strides, padding):
    """The stem pool (3x3, stride 2, padding 1; windows overlap) against numpy on the -inf padded input and lax's
    reduce-window pooling, with ties; on CPU no reduce-window or select-and-scatter in its forward or gradient."""
    x = np.round(np.random.default_rng(0).normal(size=shape) * 2).astype(np.float32) / 2
    xp = np.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
    out = [(n - w) // s + 1 for n, w, s in zip(xp.shape[1:-1], window, strides)]
    g = np.random.default_rng(1).normal(size=(shape[0], *out, shape[-1])).astype(np.float32)
    y_ref, dxp = np.zeros(g.shape, np.float32), np.zeros_like(xp)
    for b, *o, c in np.ndindex(*g.shape):
        corner = [i * s for i, s in zip(o, strides)]
        win = xp[(b, *(slice(a, a + w) for a, w in zip(corner, window)), c)]
        first = np.unravel_index(np.argmax(win), window)
        y_ref[(b, *o, c)] = win[first]
        dxp[(b, *(a + f for a, f in zip(corner, first)), c)] += g[(b, *o, c)]
    dx_ref = dxp[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(padding, shape[1:-1])))]
    y, vjp = jax.vjp(lambda t: max_pool_window(t, window, strides, padding), jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], dx_ref, rtol=1e-6)
    lax_dx = jax.vjp(lambda t: flax.linen.max_pool(t, window, strides=strides, padding=padding), jnp.asarray(x))[1]
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], lax_dx(jnp.asarray(g))[0], rtol=1e-6)
    hlo = jax.jit(jax.value_and_grad(lambda t: max_pool_window(t, window, strides, padding).sum())).lower(
        jnp.asarray(x)).as_text()
    assert jax.default_backend() != "cpu" or not ("reduce_window" in hlo or "select_and_scatter" in hlo)


@pytest.mark.parametrize("deep", [False, True])
def test_equiunet_param_count_width48(deep):
    model = build("equiunet", num_classes=3, width=48, in_channels=4, deep_supervision=deep)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 8, 4), jnp.float32))
    count = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables))
    assert count == _equiunet_param_count(48, 4, 3, deep)
    assert set(variables["params"]) == {"encoder", "decoder"}
    assert set(variables["params"]["encoder"]) == {f"encoder{i}" for i in range(1, 5)}
    shapes = _shapes(variables["params"])
    assert shapes["decoder"]["bottom_2"]["conv"]["kernel"] == (3, 3, 3, 768, 192)
    assert shapes["decoder"]["decoder3"]["ConvBnRelu1"]["conv"]["kernel"] == (3, 3, 3, 384, 192)


def test_equiunet_shapes_and_divisibility_error():
    model = build("equiunet", num_classes=3, width=4, deep_supervision=True)
    x = jax.ShapeDtypeStruct((1, 32, 32, 32, 4), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out["seg"].shape == (1, 32, 32, 32, 3) and len(out["deep"]) == 4
    assert all(d.shape == (1, 32, 32, 32, 3) for d in out["deep"])
    with pytest.raises(ValueError, match="unet3d.py.*divisible by 8"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 12, 16, 16, 4), jnp.float32))


# -------------------------------------------------------------------------------------------- positional encoding


def test_positional_encoding_hand_values():
    p = positional_encoding((2, 3, 4))
    assert p.shape == (2, 3, 4, 3) and p.dtype == np.float32
    # D=2: -1, 1; W=3: -1, 0, 1; H=4: -1, -1/3, 1/3, 1
    np.testing.assert_allclose(p[0, 0, 0], [-1, -1, -1], atol=1e-7)
    np.testing.assert_allclose(p[1, 1, 2], [1, 0, 1 / 3], atol=1e-7)
    np.testing.assert_allclose(p[0, 2, 1], [-1, 1, -1 / 3], atol=1e-7)
    # 2D chest X-ray form: D = 1 -> first coordinate 0 everywhere
    p2 = positional_encoding((1, 3, 2))
    np.testing.assert_allclose(p2[0, :, :, 0], 0.0)
    np.testing.assert_allclose(p2[0, 1, 0], [0, 0, -1], atol=1e-7)
    np.testing.assert_allclose(p2[0, 2, 1], [0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(positional_encoding((3, 2))[2, 1], [1, 1], atol=1e-7)


# ------------------------------------------------------------------------------------------------------ AAB


def _layer_norm(x, p, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _aab_numpy(params, e4, m2, heads, head_dim, pool_e, pool_m):
    """Direct implementation of Sec. 3.2 / Eq. 1-2 with per-head loops; pooling factors are given per axis."""
    dense = lambda x, p: x @ p["kernel"] + p["bias"]  # noqa: E731

    def pool(x, f):
        b, c, grid = x.shape[0], x.shape[-1], x.shape[1:-1]
        split = [b] + [v for g, k in zip(grid, f) for v in (g // k, k)] + [c]
        return x.reshape(split).max(axis=tuple(range(2, 2 * len(grid) + 1, 2)))

    e_ds, m_ds = pool(e4, pool_e), pool(m2, pool_m)
    grid = e_ds.shape[1:-1]
    full = grid if len(grid) == 3 else (1, *grid)
    lin = [np.zeros(1) if n == 1 else np.array([(2 * i - n + 1) / (n - 1) for i in range(n)]) for n in full]
    pos = np.stack(np.meshgrid(*lin, indexing="ij"), -1).reshape(-1, 3)
    b, ce = e4.shape[0], e4.shape[-1]
    kv = np.concatenate([e_ds.reshape(b, -1, ce), np.broadcast_to(pos, (b, *pos.shape))], -1)
    q = dense(m_ds.reshape(b, -1, m2.shape[-1]), params["query"])
    k, v = dense(kv, params["key"]), dense(kv, params["value"])
    outs = []
    for h in range(heads):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        logits = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / np.sqrt(head_dim)  # Eq. 1
        att = np.exp(logits - logits.max(-1, keepdims=True))
        outs.append((att / att.sum(-1, keepdims=True)) @ v[..., sl])
    x = _layer_norm(dense(np.concatenate(outs, -1), params["out"]), params["norm1"])  # Eq. 2
    x = _layer_norm(x + dense(np.maximum(dense(x, params["ffn1"]), 0), params["ffn2"]), params["norm2"])
    x = x.reshape(b, *grid, ce)
    for axis, f in enumerate(pool_e, start=1):
        x = np.repeat(x, f, axis=axis)
    return e4 + x


@pytest.mark.slow
@pytest.mark.parametrize(
    "e4_shape, m2_shape, pool_e, pool_m",
    [((2, 4, 4, 4, 6), (2, 2, 2, 2, 5), (2, 2, 2), (1, 1, 1)), ((1, 2, 4, 6), (1, 4, 2, 5), (1, 2), (2, 1))],
)
def test_aab_matches_numpy_equations(e4_shape, m2_shape, pool_e, pool_m):
    rng = np.random.default_rng(2)
    e4 = rng.standard_normal(e4_shape).astype(np.float32)
    m2 = rng.standard_normal(m2_shape).astype(np.float32)
    aab = AAB(num_heads=2, head_dim=3, ffn_mult=2)
    variables = jax.jit(aab.init)(_init_key(), e4, m2)
    # random biases / norm affine so that every parameter matters
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.3 * rng.standard_normal(a.shape).astype(np.float32), variables["params"]
    )
    assert params["key"]["kernel"].shape == (6 + 3, 6)  # [E4ds, P] -> heads*head_dim; 2D keeps 3 P channels
    got = aab.apply({"params": params}, jnp.asarray(e4), jnp.asarray(m2))
    ref = _aab_numpy(params, e4.astype(np.float64), m2.astype(np.float64), 2, 3, pool_e, pool_m)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------- 2D SAN/AAB


def test_san_and_aab_2d_shapes():
    x = jax.ShapeDtypeStruct((2, 64, 48, 3), jnp.float32)
    san = SAN(width=4)
    san_vars = jax.eval_shape(san.init, jax.random.key(0), x)
    m2, gaze = jax.eval_shape(san.apply, san_vars, x)
    chex.assert_shape([m2, gaze], [(2, 4, 3, 8), (2, 4, 3, 1)])
    assert _shapes(san_vars["params"])["group1"]["ConvBnRelu1"]["conv"]["kernel"] == (3, 3, 3, 4)
    e4 = jax.ShapeDtypeStruct((2, 8, 6, 16), jnp.float32)
    aab = AAB(num_heads=2, head_dim=4)
    aab_vars = jax.eval_shape(aab.init, jax.random.key(0), e4, m2)
    chex.assert_shape(jax.eval_shape(aab.apply, aab_vars, e4, m2), (2, 8, 6, 16))


def test_san_3d_shapes_and_error():
    x = jax.ShapeDtypeStruct((1, 32, 32, 16, 4), jnp.float32)
    san = SAN(width=4)
    variables = jax.eval_shape(san.init, jax.random.key(0), x)
    m2, gaze = jax.eval_shape(san.apply, variables, x)
    chex.assert_shape([m2, gaze], [(1, 2, 2, 1, 8), (1, 2, 2, 1, 1)])
    with pytest.raises(ValueError, match="san.py"):
        jax.eval_shape(san.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 24, 32, 32, 4), jnp.float32))


# ---------------------------------------------------------------------------------------------- GazeSegmenter


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("deep", [False, True])
def test_segmenter_output_shapes(method, deep):
    model = build("gaze_segmenter", method=method, deep_supervision=deep, **TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), X_TINY)
    out = jax.eval_shape(model.apply, variables, X_TINY)
    assert set(out) == {"seg", "deep", "gaze", "survival"}
    chex.assert_shape(out["seg"], (1, 16, 32, 32, 3))
    assert len(out["deep"]) == (4 if deep else 0)
    chex.assert_shape(out["deep"], (1, 16, 32, 32, 3))
    if method == "backbone":
        assert out["gaze"] is None
    else:
        chex.assert_shape(out["gaze"], (1, 1, 2, 2, 1))
    assert out["survival"] is None
    expected = {"encoder", "decoder"} | {
        "backbone": set(), "ours": {"san", "aab"}, "ours_no_gaze": {"san", "aab"},
        "gaze_star": {"gaze_head"}, "san_star": {"san", "san_fuse"},
    }[method]
    assert set(variables["params"]) == expected


def test_backbone_checkpoint_maps_into_ours():
    equi = build("equiunet", deep_supervision=True, width=4)
    ours = build("gaze_segmenter", method="ours", deep_supervision=True, **TINY)
    v_equi = jax.eval_shape(equi.init, jax.random.key(0), X_TINY)
    v_ours = jax.eval_shape(ours.init, jax.random.key(0), X_TINY)
    for part in ("encoder", "decoder"):
        assert _shapes(v_equi["params"][part]) == _shapes(v_ours["params"][part])


def test_survival_head_adds_exactly_one_dense():
    base = jax.eval_shape(build("gaze_segmenter", **TINY).init, jax.random.key(0), X_TINY)
    surv_model = build("gaze_segmenter", survival_classes=3, **TINY)
    surv = jax.eval_shape(surv_model.init, jax.random.key(0), X_TINY)
    base_keys, surv_flat = set(_flat_params(base)), _flat_params(surv)
    extra = {k: v.shape for k, v in surv_flat.items() if k not in base_keys}
    assert extra == {"survival_head/kernel": (8 * TINY["width"], 3), "survival_head/bias": (3,)}
    assert base_keys <= set(surv_flat)
    chex.assert_shape(jax.eval_shape(surv_model.apply, surv, X_TINY)["survival"], (1, 3))


def test_unknown_method_and_gaze_grid_error():
    with pytest.raises(ValueError, match="unknown method"):
        jax.eval_shape(build("gaze_segmenter", method="nope", **TINY).init, jax.random.key(0), X_TINY)
    bad = jax.ShapeDtypeStruct((1, 8, 32, 32, 4), jnp.float32)  # fine for the backbone, not for the 1/16 grid
    jax.eval_shape(build("gaze_segmenter", method="backbone", **TINY).init, jax.random.key(0), bad)
    with pytest.raises(ValueError, match="divisible by 16"):
        jax.eval_shape(build("gaze_segmenter", method="ours", **TINY).init, jax.random.key(0), bad)


def test_gaze_modulation_formula():
    rng = np.random.default_rng(3)
    seg, gaze = rng.standard_normal((2, 4, 3)) * 4, rng.standard_normal((2, 4, 1)) * 4
    got = jax.nn.sigmoid(gaze_modulated_logits(jnp.asarray(seg), jnp.asarray(gaze)))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(got, sig(seg) * sig(gaze), rtol=1e-5, atol=1e-6)
    assert np.isfinite(gaze_modulated_logits(jnp.asarray([50.0]), jnp.asarray([50.0]))).all()


# ------------------------------------------------------------------------------------ compiled tiny forward passes


@pytest.mark.slow
def test_ours_forward_is_finite_and_uses_aab():
    model = build("gaze_segmenter", method="ours", deep_supervision=True, survival_classes=3, **TINY)
    x = jax.random.uniform(jax.random.key(1), X_TINY.shape)
    variables = _random_variables(model, x)
    apply = jax.jit(model.apply)
    out = apply(variables, x)
    for leaf in jax.tree_util.tree_leaves(out):
        assert np.isfinite(np.asarray(leaf)).all()
    # with every AAB parameter zero, M' = 0 and E4' = E4: the output must differ from the real AAB's
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, variables["params"]["aab"])
    out0 = apply({"params": {**variables["params"], "aab": zeroed}}, x)
    assert not np.allclose(out["seg"], out0["seg"])


@pytest.mark.slow
def test_gaze_star_eval_modulates_seg():
    model = build("gaze_segmenter", method="gaze_star", gaze_star_attention="gate", **TINY)  # the old hard gate
    x = jax.random.uniform(jax.random.key(1), X_TINY.shape)
    variables = _random_variables(model, x)

    def run(v, x):
        return model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])

    out, state = jax.jit(run)(variables, x)
    inter = state["intermediates"]
    raw_seg = inter["decoder"]["__call__"][0].seg
    full_gaze = inter["gaze_head"]["__call__"][0] + np.log(0.1 / 0.9)  # + the head's start offset (gaze_star_prior)
    np.testing.assert_allclose(out["seg"], gaze_modulated_logits(raw_seg, full_gaze.astype(jnp.float32)), atol=1e-5)
    np.testing.assert_allclose(out["gaze"][0, 0, 0, 0, 0], full_gaze[0, :16, :16, :16, 0].mean(), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = build("gaze_segmenter", method="ours", dtype=jnp.bfloat16, deep_supervision=True, **TINY)
    variables = jax.eval_shape(model.init, jax.random.key(0), X_TINY)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(model.apply, variables, X_TINY)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(out)} == {jnp.dtype(jnp.float32)}
