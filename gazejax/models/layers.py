"""Shared N-d building blocks (channels-last) for the 3D/2D segmentation models: torch-faithful conv, GroupNorm,
conv-norm-ReLU blocks, align-corners linear resizing and pooling. Spatial rank is inferred from the input rank.

Parameter names mirror open_brats2020 (`ConvBnRelu1/2`, `conv`, `bn`) so that a torch state dict maps onto Flax
variables by renaming and transposing kernels only; `bn` is a GroupNorm there too.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gazejax.models.conv_impl import conv_general_dilated_for, resolve

Dtype = Any

# torch `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, 2 / (C_out * prod(kernel))), untruncated.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


SPATIAL_AXIS = "spatial"  # the mesh axis gazejax.engine.parallel splits volumes over (mesh.spatial)


def constrain_spatial(x: jax.Array) -> jax.Array:
    """A block-boundary sharding constraint for spatial partitioning: under a mesh with a `spatial` axis
    (`jax.set_mesh`, which the trainer enters for `mesh.spatial` > 1) a volume `[B, D, H, W, C]` stays split along
    D over `spatial` (and B over the other axes), so XLA's SPMD partitioner exchanges convolution halos instead of
    gathering whole volumes. A depth that `spatial` does not divide (30 at 1/8 of a 240-deep volume over 8 devices)
    is split unevenly, the last slabs padded by the partitioner; one shorter than `spatial` (a small crop's deepest
    level) stays whole, as does a batch the other axes do not divide. Without such a mesh, or on 2D inputs, `x` is
    returned unchanged: the same module runs on one device. Sharding never changes the values, only where they
    live."""
    mesh = jax.sharding.get_abstract_mesh()
    if x.ndim < 5 or mesh.empty or SPATIAL_AXIS not in mesh.axis_names or mesh.shape[SPATIAL_AXIS] == 1:
        return x
    batch_axes = tuple(a for a in mesh.axis_names if a != SPATIAL_AXIS)
    rows = int(np.prod([mesh.shape[a] for a in batch_axes]))
    spec = jax.sharding.PartitionSpec(batch_axes if x.shape[0] % rows == 0 else None,
                                      SPATIAL_AXIS if x.shape[1] >= mesh.shape[SPATIAL_AXIS] else None)
    return jax.lax.with_sharding_constraint(x, spec)


def torch_bias_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32, *, fan_in: int) -> jax.Array:
    """torch's default conv/linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def spatial_rank(x: jax.Array) -> int:
    """Number of spatial axes of a channels-last batch `[B, *spatial, C]`."""
    return x.ndim - 2


def num_groups(channels: int, max_groups: int = 16) -> int:
    """open_brats2020's `default_norm_layer` group count: min(16, C), or C / (largest power-of-2 divisor <= 16)."""
    groups = min(max_groups, channels)
    if channels % groups:
        divisor = 16
        while channels % divisor:
            divisor //= 2
        groups = channels // divisor
    return groups


def conv(
    features: int,
    spatial_dims: int,
    in_features: int,
    kernel_size: int = 3,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    conv_impl: str = "auto",
    kernel_init: Callable | None = None,
) -> nn.Conv:
    """Convolution `[B, *S, in_features] -> [B, *S, features]`, kernel k per axis, padding dilation*(k//2).

    Bias off by default (a norm follows); kaiming-normal fan_out kernel init and torch's uniform bias init, as
    open_brats2020. `conv_impl` picks the formulation (`conv_impl.IMPLS`; same parameters whichever). Call inside
    a compact method, where the input's rank and channels are known.
    """
    pad = dilation * (kernel_size // 2)
    fan_in = in_features * kernel_size**spatial_dims
    return nn.Conv(
        features,
        (kernel_size,) * spatial_dims,
        padding=[(pad, pad)] * spatial_dims,
        kernel_dilation=dilation,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_normal_fan_out if kernel_init is None else kernel_init,
        bias_init=functools.partial(torch_bias_init, fan_in=fan_in),
        conv_general_dilated=conv_general_dilated_for(conv_impl),
        name=name,
    )


def conv1x1(x: jax.Array, features: int, dtype: Dtype = jnp.float32, name: str | None = None,
            conv_impl: str = "auto", kernel_std: float | None = None) -> jax.Array:
    """Applies a 1x1(x1) convolution with bias to `x` (open_brats2020's `conv1x1`, used for heads).

    `kernel_std`: a normal(0, kernel_std) kernel instead of kaiming fan_out (RetinaNet's 0.01 for a prediction head
    whose first gradients should not reshape the features it shares: kaiming fan_out gives a 1-output head std
    sqrt(2) per input channel).
    """
    init = None if kernel_std is None else nn.initializers.normal(kernel_std)
    return conv(features, spatial_rank(x), x.shape[-1], kernel_size=1, use_bias=True, dtype=dtype, name=name,
                conv_impl=conv_impl, kernel_init=init)(x)


def group_norm(channels: int, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm over `[B, *S, C]` with `num_groups(C)` groups, eps 1e-5, two-pass variance (torch semantics)."""
    return nn.GroupNorm(
        num_groups=num_groups(channels),
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class ConvNormAct(nn.Module):
    """conv3 (bias off) -> GroupNorm -> ReLU, `[B, *S, C_in] -> [B, *S, features]` (open_brats2020 `ConvBnRelu`)."""

    features: int
    dilation: int = 1
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, c_in = spatial_rank(x), x.shape[-1]
        x = conv(self.features, n, c_in, 3, self.dilation, dtype=self.dtype, name="conv", conv_impl=self.conv_impl)(x)
        x = group_norm(self.features, self.dtype, name="bn")(x)
        return constrain_spatial(nn.relu(x))


class UBlock(nn.Module):
    """Two ConvNormAct layers `C_in -> mid_features -> features`, both with the same dilation (open_brats2020)."""

    mid_features: int
    features: int
    dilation: int = 1
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvNormAct(self.mid_features, self.dilation, self.dtype, self.conv_impl, name="ConvBnRelu1")(
            constrain_spatial(x))
        return ConvNormAct(self.features, self.dilation, self.dtype, self.conv_impl, name="ConvBnRelu2")(x)


def max_pool(x: jax.Array, factor: int | Sequence[int] = 2) -> jax.Array:
    """Non-overlapping max pooling of `[B, *S, C]` by `factor` per spatial axis (an int applies to all axes; a
    remainder is dropped, as VALID pooling does). On CPU `_window_max` (XLA:CPU's gradient of a max reduce-window
    builds an int32 index volume per axis: 96^3 x 16 fwd + bwd 243 -> 44 ms, 48^3 x 32 62 -> 4 ms), elsewhere
    `nn.max_pool`; the same values and gradients."""
    window = _per_axis(factor, spatial_rank(x))
    if all(f == 1 for f in window):
        return x
    if jax.default_backend() == "cpu":
        return _window_max(x, window)
    return nn.max_pool(x, window, strides=window)


def max_pool_window(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> jax.Array:
    """`nn.max_pool(x, window, strides, padding)` of `[B, *S, C]` (-inf padding, windows may overlap: ResNet's and
    DenseNet's 3x3 stride-2 stem pool). On CPU `_strided_max` (16 x 112^2 x 64 fwd + bwd 274 -> 60 ms; see
    `max_pool`), elsewhere `nn.max_pool`; the same values and gradients."""
    window, strides = tuple(int(w) for w in window), tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if jax.default_backend() == "cpu":
        return _strided_max(x, window, strides, padding)
    return nn.max_pool(x, window, strides=strides, padding=padding)


def _strided_views(xp: jax.Array, window, strides, out) -> list[jax.Array]:
    """One strided slice of padded `xp` per window offset (row-major), each `[B, *out, C]`."""
    return [lax.slice(xp, (0, *tap, 0), (xp.shape[0], *[t + (o - 1) * s + 1 for t, o, s in zip(tap, out, strides)],
                                           xp.shape[-1]), (1, *strides, 1))
            for tap in itertools.product(*map(range, window))]


def _neg_inf_pad(x: jax.Array, padding) -> jax.Array:
    return jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _strided_max(x: jax.Array, window, strides, padding) -> jax.Array:
    """Max over (possibly overlapping) windows as the elementwise max of one strided view per window offset; the
    gradient goes to each window's first maximum in row-major order, as XLA's select-and-scatter sends it."""
    xp = _neg_inf_pad(x, padding)
    out = [(n - w) // s + 1 for n, w, s in zip(xp.shape[1:-1], window, strides)]
    return functools.reduce(jnp.maximum, _strided_views(xp, window, strides, out))


def _strided_max_fwd(x, window, strides, padding):
    y = _strided_max(x, window, strides, padding)
    return y, (x, y)


def _strided_max_bwd(window, strides, padding, residuals, g):
    x, y = residuals
    xp = _neg_inf_pad(x, padding)
    taken, dxp = jnp.zeros(y.shape, bool), jnp.zeros(xp.shape, g.dtype)
    taps = itertools.product(*map(range, window))
    for tap, view in zip(taps, _strided_views(xp, window, strides, y.shape[1:-1])):
        first = (view == y) & ~taken
        taken = taken | first
        config = [(0, 0, 0), *[(t, n - t - (o - 1) * s - 1, s - 1)  # back to the view's strided positions
                               for t, n, o, s in zip(tap, xp.shape[1:-1], y.shape[1:-1], strides)], (0, 0, 0)]
        dxp = dxp + lax.pad(jnp.where(first, g, 0), jnp.zeros((), g.dtype), config)
    return (dxp[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(padding, x.shape[1:-1])))].astype(x.dtype),)


_strided_max.defvjp(_strided_max_fwd, _strided_max_bwd)


def _windows(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """`[B, *S, C]` -> `[B, S_1 // w_1, w_1, ..., S_n // w_n, w_n, C]` (remainders cropped)."""
    out = [n // w for n, w in zip(x.shape[1:-1], window)]
    x = x[(slice(None), *(slice(0, o * w) for o, w in zip(out, window)))]
    return x.reshape(x.shape[0], *[v for o, w in zip(out, window) for v in (o, w)], x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Max over non-overlapping `window`s as a reshape and a reduction; the gradient goes to each window's first
    maximum in row-major order (XLA's select-and-scatter, which `nn.max_pool`'s gradient is, picks the same)."""
    return _windows(x, window).max(axis=tuple(range(2, 2 * len(window) + 1, 2)))


def _window_max_fwd(x, window):
    y = _window_max(x, window)
    return y, (x, y)


def _window_max_bwd(window, residuals, g):
    x, y = residuals
    axes = tuple(range(2, 2 * len(window) + 1, 2))
    xw = _windows(x, window)
    size = int(np.prod(window))  # each element's row-major position inside its window, on the window axes
    offset = jnp.asarray(np.arange(size, dtype=np.int32).reshape([1] + [v for w in window for v in (1, w)] + [1]))
    first = jnp.where(xw == jnp.expand_dims(y, axes), offset, size).min(axis=axes, keepdims=True)
    dx = jnp.where(offset == first, jnp.expand_dims(g, axes), 0).astype(x.dtype)
    dx = dx.reshape(x.shape[0], *[s // w * w for s, w in zip(x.shape[1:-1], window)], x.shape[-1])
    return (jnp.pad(dx, [(0, 0)] + [(0, s % w) for s, w in zip(x.shape[1:-1], window)] + [(0, 0)]),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def avg_pool(x: jax.Array, factor: int | Sequence[int]) -> jax.Array:
    """Non-overlapping average pooling of `[B, *S, C]` by `factor` per spatial axis."""
    window = _per_axis(factor, spatial_rank(x))
    if all(f == 1 for f in window):
        return x
    return nn.avg_pool(x, window, strides=window)


def _per_axis(factor: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (int(factor),) * n if np.isscalar(factor) else tuple(int(f) for f in factor)


def _align_corners_source(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left/right source indices and right weights of align-corners linear resampling along one axis.

    Output index i samples the input at s = i * (n_in - 1) / (n_out - 1) (s = 0 when n_out == 1), as torch's
    `interpolate(..., align_corners=True)` and scipy's `zoom(order=1, grid_mode=False)`.
    """
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
    lo = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_align_corners(x: jax.Array, size: Sequence[int], matmul: bool = False) -> jax.Array:
    """Separable (bi/tri)linear resize of `[B, *S, C]` to spatial `size` with align_corners=True semantics.

    Gathers the two neighbours per axis and blends them elementwise, so it is exact in float32 (no matmul
    precision loss on TPU) and costs two gathers per axis. `matmul`: per axis one product with the `[n_out, n_in]`
    interpolation matrix at full float32 precision instead (the same values to rounding, ~1e-7 relative; on
    XLA:CPU forward + backward 1.9x faster than the gathers, whose gradient is a scatter-add).
    """
    n = spatial_rank(x)
    if len(size) != n:
        raise ValueError(f"layers.py: resize size {tuple(size)} does not match spatial rank {n} of {x.shape}")
    for axis, n_out in enumerate(size, start=1):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        lo, hi, w = _align_corners_source(n_in, int(n_out))
        if matmul:
            m = np.zeros((n_out, n_in), np.float32)
            np.add.at(m, (np.arange(n_out), lo), 1 - w)
            np.add.at(m, (np.arange(n_out), hi), w)
            y = jnp.tensordot(jnp.asarray(m, x.dtype), x, axes=((1,), (axis,)), precision=lax.Precision.HIGHEST)
            x = jnp.moveaxis(y, 0, axis)
            continue
        w = jnp.asarray(w, x.dtype).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        x_lo, x_hi = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
        x = x_lo + (x_hi - x_lo) * w
    return x


def upsample_linear(x: jax.Array, factor: int = 2, conv_impl: str = "xla") -> jax.Array:
    """Align-corners (bi/tri)linear up-sampling of `[B, *S, C]` by an integer factor per spatial axis
    (torch `nn.Upsample(scale_factor=factor, mode="trilinear", align_corners=True)`), as matrix products
    (`resize_align_corners(matmul=True)`) where `conv_impl` resolves to one of the XLA:CPU formulations."""
    return resize_align_corners(x, [s * factor for s in x.shape[1:-1]], matmul=resolve(conv_impl) != "xla")


def upsample_nearest(x: jax.Array, factor: int | Sequence[int]) -> jax.Array:
    """Nearest up-sampling of `[B, *S, C]`: each cell is repeated `factor` times per spatial axis (the exact
    inverse footprint of a non-overlapping pool with the same factor)."""
    for axis, f in enumerate(_per_axis(factor, spatial_rank(x)), start=1):
        if f > 1:
            x = jnp.repeat(x, f, axis=axis)
    return x
