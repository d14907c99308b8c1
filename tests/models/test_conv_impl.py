"""Convolution formulations of gazejax.models.conv_impl against lax.conv_general_dilated (outputs and gradients),
and models built with different conv_impl sharing parameters and outputs."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from gazejax.models import conv_impl
from gazejax.models.resnet import resnet18
from gazejax.models.unet3d import EquiUnet
from tests.models.params import random_variables

IMPLS = ("taps", "im2col", "depth2d", "mixed", "onednn")
# (input shape, kernel shape, strides, padding, dilation)
CASES = {
    "3d_dil2_same": ((2, 6, 5, 6, 4), (3, 3, 3, 4, 2), (1, 1, 1), "SAME", (2, 2, 2)),
    "3d_stride2_asym": ((1, 7, 6, 5, 2), (3, 3, 3, 2, 3), (2, 2, 2), [(0, 1), (1, 0), (2, 1)], (1, 1, 1)),
    "3d_1x1_stride2": ((1, 6, 6, 6, 3), (1, 1, 1, 3, 5), (2, 2, 2), [(0, 0)] * 3, (1, 1, 1)),
    "3d_rect_kernel": ((1, 4, 7, 5, 3), (1, 3, 2, 3, 2), (1, 1, 1), [(0, 0), (1, 1), (0, 1)], (1, 1, 2)),
    "2d_mixed": ((2, 9, 8, 3), (3, 3, 3, 4), (2, 1), [(1, 0), (0, 2)], (1, 2)),
}

def _numbers(ndim):
    lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(lhs, (ndim - 1, ndim - 2) + tuple(range(ndim - 2)), lhs)


def _value_and_grads(fn, x, w, strides, padding, dilation, dtype=jnp.float32):
    """(y, dL/dx, dL/dw) of L = sum(y * c) for a fixed random cotangent c."""
    def conv(a, b):
        return fn(a.astype(dtype), b.astype(dtype), strides, padding, None, dilation, _numbers(x.ndim))

    y, vjp = jax.vjp(conv, x, w)
    c = jax.random.normal(jax.random.key(3), y.shape, jnp.float32).astype(y.dtype)
    return (y, *vjp(c))


def _inputs(case):
    x_shape, w_shape, strides, padding, dilation = CASES[case]
    x = jax.random.normal(jax.random.key(0), x_shape, jnp.float32)
    w = jax.random.normal(jax.random.key(1), w_shape, jnp.float32)
    return x, w, strides, padding, dilation


@functools.lru_cache(maxsize=None)
def _lax_reference(case):
    """lax.conv_general_dilated's (y, dx, dw) for a case: compiled once, shared by the formulations' tests."""
    args = _inputs(case)
    return jax.jit(lambda x, w: _value_and_grads(lax.conv_general_dilated, x, w, *args[2:]))(*args[:2])


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_lax_forward_and_gradients(impl, case, fast_compile):
    args = _inputs(case)
    want = _lax_reference(case)
    fn = conv_impl.conv_general_dilated_for(impl)
    got = jax.jit(lambda x, w: _value_and_grads(fn, x, w, *args[2:]),
                  compiler_options=conv_impl.compiler_options(impl))(*args[:2])
    for g, r, what in zip(got, want, ("y", "dx", "dw")):
        assert g.shape == r.shape and g.dtype == r.dtype, what
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))), err_msg=what)


def test_depth2d_native_filter_gradient_path(monkeypatch, fast_compile):
    """The wide-layer branch of depth2d's backward (native 3D filter gradient) is also exact."""
    monkeypatch.setattr(conv_impl, "NATIVE_DW_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv_impl, "NATIVE_DW_MIN_VOXELS", 1)
    args = _inputs("3d_dil2_same")
    want = _value_and_grads(lax.conv_general_dilated, *args)
    got = _value_and_grads(conv_impl.conv_general_dilated_for("depth2d"), *args)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("case", ("3d_dil2_same", "3d_rect_kernel"))
@pytest.mark.parametrize("patch", (1, 12 * 27 * 4, 10**9))
def test_depth2d_slab_filter_gradient_path(monkeypatch, case, patch, fast_compile):
    """depth2d's slab filter gradient (one im2col matmul per block of output rows of a depth slice with at most
    `patch` patch elements; batch 2, dilation 2, a non-cubic kernel, one row per block up to whole slices) equals
    lax's, and dx is untouched."""
    monkeypatch.setattr(conv_impl, "SLAB_DW_MIN_SLICE", 1)
    monkeypatch.setattr(conv_impl, "SLAB_DW_PATCH", patch)
    args = _inputs(case)
    want = _value_and_grads(lax.conv_general_dilated, *args)
    got = _value_and_grads(conv_impl.conv_general_dilated_for("depth2d"), *args)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def test_depth2d_slab_filter_gradient_only_for_wide_slices(monkeypatch):
    """The slab path is taken for stride-1 convs whose output depth slices have >= SLAB_DW_MIN_SLICE voxels only
    (its jaxpr has a scan; the other paths do not); under "onednn" only from SLAB_DW_ONEDNN_MIN_VOXELS output
    voxels or SLAB_DW_ONEDNN_MIN_WORK output voxels x C_in x C_out on."""
    def has_scan(shape, strides, impl="depth2d", c_out=2):
        x, w = jnp.zeros(shape), jnp.zeros((3, 3, 3, shape[-1], c_out))
        fn = conv_impl.conv_general_dilated_for(impl)
        grad = jax.grad(lambda b: jnp.sum(fn(x, b, strides, "SAME", None, None, _numbers(5))))
        return "scan" in str(jax.make_jaxpr(grad)(w))

    side = int(np.ceil(np.sqrt(conv_impl.SLAB_DW_MIN_SLICE)))
    assert has_scan((1, 2, side, side, 1), (1, 1, 1))
    assert not has_scan((1, 2, side - 1, side - 1, 1), (1, 1, 1))
    assert not has_scan((1, 2, 2 * side, 2 * side, 1), (1, 2, 2))
    assert not has_scan((1, 2, side, side, 1), (1, 1, 1), "onednn")  # 2 * side^2 voxels, 1 x 2 channels
    assert has_scan((1, 8, side, side, 64), (1, 1, 1), "onednn", 64)  # 8 side^2 x 64 x 64 >= 2^25
    assert not has_scan((1, 7, side, side, 64), (1, 1, 1), "onednn", 64)
    assert not has_scan((1, 2, side - 1, side - 1, 64), (1, 1, 1), "onednn", 64)
    monkeypatch.setattr(conv_impl, "SLAB_DW_ONEDNN_MIN_VOXELS", 2 * side * side)
    assert has_scan((1, 2, side, side, 1), (1, 1, 1), "onednn")


@pytest.mark.parametrize("case", ("3d_dil2_same", "3d_stride2_asym", "2d_mixed"))
@pytest.mark.parametrize("slab", (False, True))
def test_onednn_matches_lax_and_runs_in_onednn(monkeypatch, case, slab, fast_compile):
    """conv_impl "onednn" under its compiler options: XLA:CPU hands the convolutions to oneDNN (custom calls in
    the compiled step; without the options there are none) and outputs and gradients equal lax's, with the slab
    filter gradient (`slab`: from any slice size on; stride 2 never takes it) and without."""
    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN custom calls are XLA:CPU's")
    monkeypatch.setattr(conv_impl, "SLAB_DW_MIN_SLICE", 1 if slab else 10**12)
    monkeypatch.setattr(conv_impl, "SLAB_DW_ONEDNN_MIN_VOXELS", 1)
    x, w, *rest = _inputs(case)
    want = _lax_reference(case)
    fn = conv_impl.conv_general_dilated_for("onednn")
    step = jax.jit(lambda a, b: _value_and_grads(fn, a, b, *rest),
                   compiler_options=conv_impl.compiler_options("onednn"))
    assert "__onednn$convolution" in step.lower(x, w).compile().as_text()
    assert "__onednn$" not in jax.jit(lambda a, b: _value_and_grads(fn, a, b, *rest)).lower(x, w).compile().as_text()
    assert ("scan" in str(jax.make_jaxpr(lambda a, b: _value_and_grads(fn, a, b, *rest))(x, w))) == (
        slab and x.ndim == 5 and rest[0] == (1, 1, 1))
    for g, r, what in zip(step(x, w), want, ("y", "dx", "dw")):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))), err_msg=what)


def test_onednn_compiler_options():
    """Only "onednn" (and "auto" where it resolves to it) asks for oneDNN; never under `counting` (XLA's cost
    analysis counts nothing inside its custom calls)."""
    assert conv_impl.compiler_options("onednn") == conv_impl.ONEDNN_OPTIONS
    assert conv_impl.compiler_options("xla") == conv_impl.compiler_options("mixed") == {}
    assert bool(conv_impl.compiler_options("auto")) == (conv_impl.resolve("auto") == "onednn")
    with conv_impl.counting():
        assert conv_impl.compiler_options("onednn") == {}


@pytest.mark.parametrize("impl", ("taps", "depth2d", "onednn"))
def test_bfloat16_close_to_float32(impl, fast_compile):
    x, w, *rest = _inputs("3d_stride2_asym")
    want = _value_and_grads(lax.conv_general_dilated, x, w, *rest)
    fn = conv_impl.conv_general_dilated_for(impl)
    got = jax.jit(lambda a, b: _value_and_grads(fn, a, b, *rest, dtype=jnp.bfloat16),
                  compiler_options=conv_impl.compiler_options(impl))(x, w)
    assert got[0].dtype == jnp.bfloat16
    for g, r in zip(got, want):
        scale = float(jnp.max(jnp.abs(r)))
        np.testing.assert_allclose(np.asarray(g, np.float32), r, atol=3e-2 * scale)
        assert float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) > 0  # really ran in bf16


@pytest.mark.slow
def test_uncovered_cases_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    fn = conv_impl.conv_general_dilated_for("taps")
    grouped = fn(x, w, (1, 1), "SAME", None, None, _numbers(4), feature_group_count=2)
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", None, None, _numbers(4), feature_group_count=2)
    np.testing.assert_array_equal(grouped, ref)
    nchw = jnp.moveaxis(x, -1, 1)
    oihw = jax.random.normal(jax.random.key(2), (3, 4, 3, 3))
    np.testing.assert_array_equal(fn(nchw, oihw, (1, 1), "VALID"), lax.conv_general_dilated(nchw, oihw, (1, 1), "VALID"))


GROUPED = {  # (input shape, kernel shape, strides, padding, dilation, groups); kernel [*K, C_in / G, C_out]
    "3d_stride2_same": ((1, 9, 8, 7, 8), (3, 3, 3, 2, 12), (2, 2, 2), "SAME", (1, 1, 1), 4),
    "3d_stride2_dil2": ((1, 10, 9, 8, 8), (3, 3, 3, 2, 12), (2, 2, 2), [(2, 2)] * 3, (2, 2, 2), 4),
    "3d_stride3_dil2": ((1, 12, 11, 12, 8), (3, 3, 3, 1, 16), (3, 3, 3), "VALID", (2, 2, 2), 8),
    "3d_331_dense_slab": ((2, 3, 16, 17, 8), (3, 3, 1, 4, 6), (1, 1, 1), [(1, 1), (1, 1), (0, 0)], (1, 1, 1), 2),
    "3d_dil3_taps": ((1, 8, 8, 8, 8), (3, 3, 3, 2, 12), (1, 1, 1), [(3, 3)] * 3, (3, 3, 3), 4),
    "2d_stride23_asym": ((2, 9, 10, 6), (3, 3, 3, 4), (2, 3), [(1, 0), (2, 1)], (1, 2), 2),
}


@pytest.mark.parametrize("case", sorted(GROUPED))
def test_onednn_grouped_matches_lax_without_input_dilated_convs(case, fast_compile):
    """Grouped (not depthwise) convolutions under "onednn": lax's values and gradients, and no convolution in the
    gradient is input-dilated (a strided layer's input gradient goes through stride-1 phase convolutions; oneDNN's
    input-dilated one took 3.5 s at 48^3); the dense slab filter gradient for wide 3D slices, else per-tap einsums."""
    x_shape, w_shape, strides, padding, dilation, groups = GROUPED[case]
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)

    def run(fn):
        return _value_and_grads(functools.partial(fn, feature_group_count=groups), x, w, strides, padding, dilation)

    fn = conv_impl.conv_general_dilated_for("onednn")
    got = jax.jit(lambda: run(fn), compiler_options=conv_impl.compiler_options("onednn"))()
    for g, r, what in zip(got, run(lax.conv_general_dilated), ("y", "dx", "dw")):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))), err_msg=what)
    jaxpr = str(jax.make_jaxpr(lambda a, b: run(fn))(x, w))
    assert "conv_general_dilated" in jaxpr and "lhs_dilation=(1, 1" in jaxpr
    assert all(set(d.split(", ")) == {"1"} for d in re.findall(r"lhs_dilation=\(([^)]*)\)", jaxpr))
    dense = x.ndim == 5 and strides == (1, 1, 1)  # stride 1 and slices of >= GROUPED_DENSE_MIN_SLICE voxels
    assert ("scan" in jaxpr) == (dense and x_shape[2] * x_shape[3] >= conv_impl.GROUPED_DENSE_MIN_SLICE)
    with conv_impl.counting():  # the einsums, the grouped FLOPs (the dense slab does groups x as many)
        assert "scan" not in str(jax.make_jaxpr(lambda a, b: run(fn))(x, w))


DEPTHWISE = {  # (input shape, kernel shape, strides, padding, dilation); kernel [*K, 1, C]
    "2d_stride2": ((2, 9, 8, 5), (3, 3, 1, 5), (2, 2), [(1, 1), (1, 1)], (1, 1)),
    "2d_5x5_asym": ((1, 7, 9, 3), (5, 5, 1, 3), (1, 1), [(2, 1), (0, 2)], (1, 1)),
    "3d_dil2": ((1, 6, 5, 6, 4), (3, 3, 3, 1, 4), (1, 1, 1), "SAME", (2, 2, 2)),
}


@pytest.mark.parametrize("impl", ("taps", "mixed"))
@pytest.mark.parametrize("case", sorted(DEPTHWISE))
def test_depthwise_as_taps_matches_lax(impl, case, fast_compile):
    """Depthwise convolutions (groups = C_in = C_out: MobileNet, EfficientNet) under taps / mixed: the elementwise
    tap sum (no grouped conv in the jaxpr) with lax's values and gradients."""
    x_shape, w_shape, strides, padding, dilation = DEPTHWISE[case]
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    groups = x_shape[-1]

    def run(fn):
        return _value_and_grads(functools.partial(fn, feature_group_count=groups), x, w, strides, padding, dilation)

    fn = conv_impl.conv_general_dilated_for(impl)
    for g, r in zip(run(fn), run(lax.conv_general_dilated)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))
    jaxpr = str(jax.make_jaxpr(lambda a, b: fn(a, b, strides, padding, None, dilation, _numbers(x.ndim),
                                               feature_group_count=groups))(x, w))
    assert "conv_general_dilated" not in jaxpr


def test_counting_traces_the_filter_gradient_without_the_scan():
    """Inside conv_impl.counting() depth2d's filter gradient has no loop (so XLA's cost analysis counts all of it),
    with the same value; outside it the slab scan is back."""
    side = int(np.ceil(np.sqrt(conv_impl.SLAB_DW_MIN_SLICE)))
    x, w = jax.random.normal(jax.random.key(0), (1, 2, side, side, 1)), jnp.ones((3, 3, 3, 1, 2))
    fn = conv_impl.conv_general_dilated_for("depth2d")

    def grad():  # a new function each time: jax's trace caches are keyed on the function, not on counting()
        return jax.grad(lambda b: jnp.sum(fn(x, b, (1, 1, 1), "SAME", None, None, _numbers(5)) ** 2))

    with conv_impl.counting():
        assert "scan" not in str(jax.make_jaxpr(grad())(w))
        counted = grad()(w)
    assert "scan" in str(jax.make_jaxpr(grad())(w)) and not conv_impl._COUNTING
    np.testing.assert_allclose(counted, grad()(w), rtol=1e-5)


def test_resolve():
    assert conv_impl.resolve("auto") == conv_impl.AUTO.get(jax.default_backend(), "xla")
    assert conv_impl.conv_general_dilated_for("xla") is lax.conv_general_dilated
    with pytest.raises(ValueError, match="unknown conv_impl"):
        conv_impl.resolve("winograd")


@pytest.mark.slow
@pytest.mark.parametrize("make, shape", [
    (lambda impl: EquiUnet(num_classes=3, width=2, in_channels=4, conv_impl=impl), (1, 8, 8, 8, 4)),
    (lambda impl: resnet18(num_classes=3, width=4, conv_impl=impl), (2, 32, 32, 3)),
])
@pytest.mark.parametrize("impl", ("mixed", "onednn"))
def test_models_share_parameters_and_outputs(make, shape, impl, fast_compile):
    x = jax.random.normal(jax.random.key(0), shape)
    ref, other = make("xla"), make(impl)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(ref.init, jax.random.key(1), x))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(other.init, jax.random.key(1), x)) == shapes
    rng = np.random.default_rng(0)  # any parameters will do (initialising under jit compiles for a minute)
    variables = jax.tree.map(lambda a: jnp.asarray(np.abs(rng.normal(0, 0.3, a.shape)) + 0.5, a.dtype),
                             jax.eval_shape(ref.init, jax.random.key(1), x))  # positive: BN variances are valid
    want = jax.tree.leaves(jax.jit(ref.apply)(variables, x))
    got = jax.tree.leaves(jax.jit(other.apply, compiler_options=conv_impl.compiler_options(impl))(variables, x))
    assert len(got) == len(want)
    for g, r in zip(got, want):
        assert np.all(np.isfinite(r))
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def test_san_aab_build_model_passes_conv_impl():
    from gazejax.methods.san_aab import spec as san_aab

    config = ml_collections.ConfigDict({"method": "ours", "model": {
        "backbone": "equiunet", "width": 8, "nnunet_width": 8, "dmfnet_width": 32, "deep_supervision": False,
        "san_width": 8, "aab_heads": 2, "aab_head_dim": 16, "dtype": "float32", "conv_impl": "taps"}})
    assert san_aab.build_model(config).conv_impl == "taps"


def _tiny_models():
    from gazejax.models.densenet import DenseNet
    from gazejax.models.dmfnet import DMFNet
    from gazejax.models.efficientnet import efficientnet_b0
    from gazejax.models.mobilenet import mobilenet_v2
    from gazejax.models.nnunet3d import NNUNet3D
    from gazejax.models.saliency_unet import SaliencyUNet
    from gazejax.models.vit import VisionTransformer

    img = (1, 32, 32, 3)
    return {
        "densenet": (lambda i: DenseNet(4, (1, 1), 8, 2, num_classes=3, conv_impl=i), img),
        "efficientnet_b0": (lambda i: efficientnet_b0(width_mult=0.25, depth_mult=0.25, num_classes=3,
                                                      conv_impl=i), img),
        "mobilenet_v2": (lambda i: mobilenet_v2(width_mult=0.25, setting=((1, 16, 1, 1), (6, 24, 2, 2)),
                                                num_classes=3, conv_impl=i), img),
        "nnunet3d": (lambda i: NNUNet3D(width=2, deep_supervision=True, conv_impl=i), (1, 16, 16, 16, 4)),
        "dmfnet": (lambda i: DMFNet(width=16, deep_supervision=True, conv_impl=i), (1, 16, 16, 16, 4)),
        "saliency_unet": (lambda i: SaliencyUNet((4, 4, 8, 8, 8), "res_se", se_reduction=2, conv_impl=i),
                          (1, 32, 32, 1)),
        "vit_tiny": (lambda i: VisionTransformer(32, 16, 1, 2, 8, 16, num_classes=3, conv_impl=i), img),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_tiny_models()))
def test_backbones_share_parameters_and_outputs(name, fast_compile):
    make, shape = _tiny_models()[name]
    x = jax.random.normal(jax.random.key(0), shape)
    ref, other = make("xla"), make("onednn")
    shapes = jax.eval_shape(ref.init, jax.random.key(1), x)
    assert jax.tree.structure(jax.eval_shape(other.init, jax.random.key(1), x)) == jax.tree.structure(shapes)
    assert jax.tree.leaves(jax.eval_shape(other.init, jax.random.key(1), x)) == jax.tree.leaves(shapes)
    variables = random_variables(shapes)
    want = jax.tree.leaves(jax.jit(ref.apply)(variables, x))
    got = jax.tree.leaves(jax.jit(other.apply, compiler_options=conv_impl.compiler_options("onednn"))(variables, x))
    assert len(got) == len(want)
    for g, r in zip(got, want):
        assert np.all(np.isfinite(r)) and np.any(r != 0)
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def _conv_fns(model, *inputs):
    """The `conv_general_dilated` of every nn.Conv the model runs (recorded while tracing its init)."""
    found = []

    def record(next_fun, args, kwargs, context):
        if type(context.module) is nn.Conv and context.method_name == "__call__":
            found.append(context.module.conv_general_dilated)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda *x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *x),
                       *inputs)
    return found


# (config module, method module, config argument, model-block overrides): every method's build_model
BUILDS = [
    ("brats", "san_aab", "method=ours", {"backbone": "nnunet"}),
    ("brats", "san_aab", "method=tasn", {"backbone": "dmfnet"}),
    ("brats", "san_aab", "method=cbam", {}),
    ("cxr_san", "cxr_san", "method=ours,backbone=mobilenet_v2", {}),
    ("cxr_san", "cxr_san", "method=gaze_star,backbone=efficientnet_b0", {}),
    ("ggcam", "ggcam", "method=ggcam,backbone=efficientnet_b0", {}),
    ("ggcam", "ggcam", "method=plain,backbone=densenet201", {}),
    ("cxrgazelearn", "cxrgazelearn", "method=cxrgazelearn", {}),
    ("cxrgazelearn", "cxrgazelearn", "method=mt_unet", {}),
    ("gazat", "gazat", "method=gazat", {}),
    ("gazat", "gazat", "method=simclr,backbone=vit_b_16", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("cfg_name, method_name, arg, overrides", BUILDS,
                         ids=[f"{m}-{a}" for _, m, a, _ in BUILDS])
def test_build_model_forwards_conv_impl_to_every_conv(cfg_name, method_name, arg, overrides):
    """config.model.conv_impl reaches every nn.Conv of each method's model ("taps": no default gives it)."""
    import importlib

    config = importlib.import_module(f"configs.{cfg_name}").get_config(arg)
    config.model.update(overrides)
    config.model.conv_impl = "taps"
    method = importlib.import_module(f"gazejax.methods.{method_name}").METHOD
    model = method.build_model(config)
    batch = {k: jnp.asarray(v) for k, v in method.init_batch(config).items()}
    fns = _conv_fns(model, *method.model_inputs(batch))
    assert fns, "no convolution traced"
    wrong = [f for f in fns if getattr(f, "keywords", {}).get("impl") != "taps"]
    assert not wrong, f"{len(wrong)} of {len(fns)} convolutions ignore config.model.conv_impl"
