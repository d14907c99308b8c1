"""Alternative formulations of `jax.lax.conv_general_dilated` for channels-last convolutions (XLA:CPU runs its
own native convolutions well below its matmul rate), selected by name and passed to
`nn.Conv(conv_general_dilated=...)` so that parameter names, shapes and checkpoints are identical whichever
formulation runs. "onednn" (the CPU default) also needs `compiler_options` on every jit that traces the model.

Inputs `[B, *S, C_in]`, kernels `[*K, C_in, C_out]`, outputs `[B, *S_out, C_out]` (flax's NHWC/HWIO numbers).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ConvFn = Callable[..., jax.Array]
IMPLS = ("auto", "xla", "onednn", "mixed", "taps", "im2col", "depth2d")
# What "auto" resolves to per backend at trace time (see `resolve`); accelerators keep their native convolutions.
AUTO = {"cpu": "onednn"}
# XLA:CPU compiler options under which "onednn" runs its native convolutions as oneDNN primitives (the library
# PyTorch's CPU convolutions use; jaxlib ships it but rewrites convolutions only when asked): `compiler_options`.
ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_custom_call": True}
# _depth2d_bwd takes the native 3D filter gradient from this many channels (in and out) and output voxels on.
NATIVE_DW_MIN_CHANNELS, NATIVE_DW_MIN_VOXELS = 48, 4096
# ... unless, for stride 1, an output depth slice has at least SLAB_DW_MIN_SLICE voxels: then the filter gradient is
# `_slab_filter_grad`'s scan of matmuls over blocks of flattened positions whose operands hold at most SLAB_DW_PATCH
# elements (4 MiB of float32, cache-sized; 2^19 and 2^21 measured slower): faster than either of depth2d's at 48^3
# and up, and than oneDNN's (a forward convolution with the whole volume as its window) from 48^3 on (median ms,
# 2026-12-07, oneDNN vs slab: 96^3 x 16 -> 16 564 vs 215, 32 -> 16 1071 vs 431, 64^3 x 48 -> 48 1056 vs 344).
SLAB_DW_MIN_SLICE, SLAB_DW_PATCH = 1024, 2 ** 20
# Under "onednn" the slab replaces oneDNN's filter gradient only from this many output voxels, or this product of
# output voxels and C_in x C_out, on (median ms oneDNN vs slab, 2026-12-07: 48^3 x 16 -> 32 45 vs 36, 32 -> 16 49
# vs 40, 32 -> 32 87 vs 72, 64 -> 32 139 vs 125; 32^3 x 96 -> 192 777 vs 309, 64 -> 64 66 vs 67; 24^3 and 16^3
# slices are below SLAB_DW_MIN_SLICE, where oneDNN's is faster: 24^3 x 128 -> 128 75 vs 84).
SLAB_DW_ONEDNN_MIN_VOXELS, SLAB_DW_ONEDNN_MIN_WORK = 2 ** 18, 2 ** 25


_COUNTING: list[bool] = []  # set by `counting`


def resolve(impl: str) -> str:
    """The concrete formulation for `impl` ("auto" -> by the default backend, `AUTO`, else "xla")."""
    if impl not in IMPLS:
        raise ValueError(f"conv_impl.py: unknown conv_impl {impl!r}; expected one of {', '.join(IMPLS)}")
    return AUTO.get(jax.default_backend(), "xla") if impl == "auto" else impl


def compiler_options(impl: str) -> dict[str, Any]:
    """Options for `jax.jit(..., compiler_options=...)` of every function that traces a model built with `impl`:
    `ONEDNN_OPTIONS` where `impl` resolves to "onednn", else none (without them "onednn" runs XLA's own native
    convolutions: the same values, slower). None under `counting` either: XLA's cost analysis counts no FLOPs in
    oneDNN's custom calls."""
    return dict(ONEDNN_OPTIONS) if resolve(impl) == "onednn" and not _COUNTING else {}


@contextlib.contextmanager
def counting() -> Iterator[None]:
    """Models traced inside the block compute depth2d's filter gradient without the slab scan, the same math with
    no loop, and `compiler_options` gives no oneDNN options: XLA's cost analysis counts a loop body once, not per
    trip, and nothing inside oneDNN's custom calls (gazejax.bench counts a step's FLOPs so)."""
    _COUNTING.append(True)
    try:
        yield
    finally:
        _COUNTING.pop()


def conv_general_dilated_for(impl: str) -> ConvFn:
    """A function with `lax.conv_general_dilated`'s signature computing the convolution as `impl`:

    - "xla": the native `lax.conv_general_dilated`.
    - "onednn": for jits compiled with `compiler_options` (XLA:CPU then hands native convolutions to oneDNN):
      3D kernels native (forward and, at stride 1, input gradient oneDNN's; strided layers' gradients as
      "depth2d"'s, stride-1 filter gradients as depth2d's or oneDNN's), 1x1 kernels as one matmul ("taps"), other
      2D kernels native (XLA:CPU keeps those); 3D forwards 3-8x faster than "mixed"'s (`gazejax.bench.convs`).
      Grouped convolutions (not depthwise): native forward, gradients as `_grouped_bwd`'s.
    - "taps": one `[B*S_out, C_in] x [C_in, C_out]` matmul per kernel tap on a shifted (strided) view, summed.
    - "im2col": the k^n shifted views concatenated over channels, one `[B*S_out, k^n C_in] x [k^n C_in, C_out]`
      matmul.
    - "depth2d": a 3D convolution as the sum over depth taps of native 2D convolutions with depth folded into
      the batch (2D inputs go to "xla").
    - "mixed": per layer, what was fastest on XLA:CPU (2 cores of a Xeon with AMX): 1x1 kernels as one matmul
      ("taps"), 3D kernels as "depth2d", other 2D kernels native ("xla").
    - "taps", "mixed" and "onednn" compute depthwise convolutions (`feature_group_count` = C_in = C_out) as the
      sum over kernel taps of the shifted input times the tap's per-channel weights.
    - "auto": one of the above by backend (`AUTO`), chosen when the function is built.
    Cases the formulations do not cover fall back to `lax.conv_general_dilated`: dimension numbers other than
    channels-last/HWIO, input (transposed-conv) dilation, grouped convolutions other than depthwise ones under
    "taps" / "mixed" / "onednn", and batch groups.
    """
    impl = resolve(impl)
    if impl == "xla":
        return lax.conv_general_dilated
    return functools.partial(_conv, impl=impl)


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
    lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
    return lax.ConvDimensionNumbers(lhs, (ndim - 1, ndim - 2) + tuple(range(ndim - 2)), lhs)


def _conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
          lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
          dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
          precision: Any = None, preferred_element_type: Any = None, *, impl: str) -> jax.Array:
    n = lhs.ndim - 2
    strides = tuple(window_strides) or (1,) * n
    dilation = tuple(rhs_dilation or (1,) * n)
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    # depthwise (one input channel per group, as many outputs as inputs): taps, mixed, onednn sum taps elementwise
    depthwise = (impl in ("taps", "mixed", "onednn") and feature_group_count > 1 and rhs.shape[-2] == 1
                 and feature_group_count == lhs.shape[-1] == rhs.shape[-1])
    grouped = impl == "onednn" and feature_group_count > 1 and not depthwise  # `_grouped`
    covered = (numbers == _channels_last(lhs.ndim) and all(d == 1 for d in (lhs_dilation or (1,)))
               and (feature_group_count == 1 or depthwise or grouped) and batch_group_count == 1
               and not (impl == "depth2d" and n != 3))
    if not covered:
        return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation, dilation, dimension_numbers,
                                        feature_group_count, batch_group_count, precision, preferred_element_type)
    kernel = rhs.shape[:n]
    if depthwise or grouped:
        impl = "depthwise" if depthwise else "grouped"
    elif impl in ("mixed", "onednn"):
        impl = ("taps" if all(k == 1 for k in kernel) else "xla" if n != 3
                else "depth2d" if impl == "mixed" else "native3d")
    if impl == "xla":
        return lax.conv_general_dilated(lhs, rhs, strides, padding, None, dilation, dimension_numbers,
                                        precision=precision, preferred_element_type=preferred_element_type)
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:-1], dilated, strides, padding)
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if impl == "grouped":
        return _grouped(lhs, rhs, padding, strides, dilation, feature_group_count, precision,
                        not _COUNTING).astype(out_dtype)
    if impl == "native3d":  # padded by the convolution itself: no padded copy, no slice of dx
        return _native3d(lhs, rhs, padding, strides, dilation, precision, not _COUNTING).astype(out_dtype)
    x = _pad(lhs, padding)
    out = [(s - (k - 1) * d - 1) // st + 1 for s, k, d, st in zip(x.shape[1:-1], kernel, dilation, strides)]
    if impl == "depth2d":
        return _depth2d(x, rhs, out, strides, dilation, precision, out_dtype)
    views = [_view(x, tap, dilation, strides, out) for tap in itertools.product(*map(range, kernel))]
    acc = jnp.float32 if jnp.dtype(out_dtype).itemsize < 4 else out_dtype  # sum bf16 partial products in f32
    if impl == "depthwise":  # elementwise work XLA:CPU fuses; 5-11x faster (fwd + bwd) than its grouped conv
        w = rhs.reshape(-1, rhs.shape[-1]).astype(acc)
        return sum(v.astype(acc) * w[i] for i, v in enumerate(views)).astype(out_dtype)
    if impl == "im2col":
        patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
        w = rhs.reshape(-1, rhs.shape[-1])
        return _matmul(patches, w, precision, acc).astype(out_dtype)
    w = rhs.reshape(-1, *rhs.shape[-2:])
    y = sum(_matmul(v, w[i], precision, acc) for i, v in enumerate(views))
    return y.astype(out_dtype)


def _view(x: jax.Array, tap: Sequence[int], dilation: Sequence[int], strides: Sequence[int],
          out: Sequence[int]) -> jax.Array:
    """The padded input seen by kernel tap `tap`: `[B, *out, C]` (strided slice)."""
    start = [0] + [t * d for t, d in zip(tap, dilation)] + [0]
    limit = [x.shape[0]] + [s + (o - 1) * st + 1 for s, o, st in zip(start[1:-1], out, strides)] + [x.shape[-1]]
    return lax.slice(x, start, limit, [1, *strides, 1])


def _matmul(x: jax.Array, w: jax.Array, precision: Any, acc: Any) -> jax.Array:
    """`[..., C_in] x [C_in, C_out] -> [..., C_out]` accumulated in `acc`."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=acc)


def _pad(x: jax.Array, padding: Sequence[tuple[int, int]]) -> jax.Array:
    """`[B, *S, C]` zero-padded by `padding` per spatial axis."""
    return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])


def _depth2d(x: jax.Array, rhs: jax.Array, out: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
             precision: Any, out_dtype: Any) -> jax.Array:
    """Padded `[B, D, H, W, C]` VALID conv as the sum over depth taps of 2D convs on `[B * D_out, H, W, C]`."""
    y = _depth2d_vjp(x, rhs, tuple(out), tuple(strides), tuple(dilation), precision, not _COUNTING)
    return y.astype(out_dtype)


def _depth2d_sum(x: jax.Array, rhs: jax.Array, out: tuple[int, ...], strides: tuple[int, ...],
                 dilation: tuple[int, ...], precision: Any) -> jax.Array:
    """Sum over depth taps t of conv2d(x[:, t*dil_d :: stride_d] with depth folded into batch, rhs[t]), float32."""
    b = x.shape[0]
    y = 0
    for t in range(rhs.shape[0]):
        start = t * dilation[0]
        xs = lax.slice_in_dim(x, start, start + (out[0] - 1) * strides[0] + 1, strides[0], axis=1)
        xs = xs.reshape(b * out[0], *xs.shape[2:])
        y = y + lax.conv_general_dilated(xs, rhs[t], strides[1:], "VALID", None, dilation[1:], _channels_last(4),
                                         precision=precision, preferred_element_type=jnp.float32)
    return y.reshape(b, out[0], *y.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _depth2d_vjp(x, rhs, out, strides, dilation, precision, slab):
    return _depth2d_sum(x, rhs, out, strides, dilation, precision)


def _depth2d_fwd(x, rhs, out, strides, dilation, precision, slab):
    return _depth2d_sum(x, rhs, out, strides, dilation, precision), (x, rhs)


def _depth2d_bwd(out, strides, dilation, precision, slab, residuals, g):
    """dx through the 2D convs (fast on XLA:CPU); dW as `_slab_filter_grad` for stride 1 and output depth slices of
    >= SLAB_DW_MIN_SLICE voxels (`slab`: False under `counting`), else through the native 3D filter gradient when
    both channel counts are wide (XLA's 2D filter gradient over a batch of B * D_out slices is slow there), else
    the 2D one."""
    x, rhs = residuals
    _, dx_fn = jax.vjp(lambda a: _depth2d_sum(a, rhs, out, strides, dilation, precision), x)
    voxels = x.shape[0] * np.prod(out)
    if all(s == 1 for s in strides) and out[1] * out[2] >= SLAB_DW_MIN_SLICE and slab:
        return dx_fn(g)[0], _slab_filter_grad(x, g, rhs, out, dilation, precision)
    if min(rhs.shape[-2:]) >= NATIVE_DW_MIN_CHANNELS and voxels >= NATIVE_DW_MIN_VOXELS:
        _, dw_fn = jax.vjp(lambda w: _native_conv(x, w, "VALID", strides, dilation, precision), rhs)
    else:
        _, dw_fn = jax.vjp(lambda w: _depth2d_sum(x, w, out, strides, dilation, precision), rhs)
    return dx_fn(g)[0], dw_fn(g)[0]


_depth2d_vjp.defvjp(_depth2d_fwd, _depth2d_bwd)


def _native_conv(x, rhs, padding, strides, dilation, precision, groups=1):
    """The native channels-last convolution, float32 out (oneDNN's for 3D under `compiler_options`)."""
    return lax.conv_general_dilated(x, rhs, strides, padding, None, dilation, _channels_last(x.ndim),
                                    feature_group_count=groups, precision=precision,
                                    preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _native3d(x, rhs, padding, strides, dilation, precision, slab):
    """The native 3D convolution of unpadded `x` (float32 out; oneDNN's under `compiler_options`) with
    `_native3d_bwd`'s gradients."""
    return _native_conv(x, rhs, padding, strides, dilation, precision)


def _native3d_fwd(x, rhs, padding, strides, dilation, precision, slab):
    return _native_conv(x, rhs, padding, strides, dilation, precision), (x, rhs)


def _native3d_bwd(padding, strides, dilation, precision, slab, residuals, g):
    """A strided layer's gradients through depth2d (oneDNN's input gradient of a strided convolution, an
    input-dilated one, is 20-40x slower); at stride 1 dx is the native one (oneDNN's) and dW `_slab_filter_grad`
    for output depth slices of >= SLAB_DW_MIN_SLICE voxels and an output volume, or volume x C_in x C_out, past
    SLAB_DW_ONEDNN_MIN_* (`slab`: False under `counting`), else the native one."""
    x, rhs = residuals
    out = g.shape[1:-1]
    if any(s != 1 for s in strides):
        _, vjp = jax.vjp(lambda a, w: _depth2d(_pad(a, padding), w, out, strides, dilation, precision, jnp.float32),
                         x, rhs)
        return vjp(g)
    _, dx_fn = jax.vjp(lambda a: _native_conv(a, rhs, padding, strides, dilation, precision), x)
    voxels = x.shape[0] * np.prod(out)
    big = voxels >= SLAB_DW_ONEDNN_MIN_VOXELS or voxels * np.prod(rhs.shape[-2:]) >= SLAB_DW_ONEDNN_MIN_WORK
    if out[1] * out[2] >= SLAB_DW_MIN_SLICE and slab and big:
        return dx_fn(g)[0], _slab_filter_grad(_pad(x, padding), g, rhs, out, dilation, precision)
    _, dw_fn = jax.vjp(lambda w: _native_conv(x, w, padding, strides, dilation, precision), rhs)
    return dx_fn(g)[0], dw_fn(g)[0]


_native3d.defvjp(_native3d_fwd, _native3d_bwd)


def _slab_filter_grad(x: jax.Array, g: jax.Array, rhs: jax.Array, out: tuple[int, ...],
                      dilation: tuple[int, ...], precision: Any) -> jax.Array:
    """Filter gradient of a stride-1 VALID 3D conv of padded `x` `[B, D, H, W, C_in]` given the output cotangent
    `g` `[B, *out, C_out]`, as a scan of matmuls over blocks of output positions. Positions are flattened with the
    padded input's strides (output voxel (d, h, w) at d H W + h W + w; the positions past a row's or a slice's
    end get a zero cotangent), so that kernel tap (a, b, c) reads the input at the constant offset
    a d_d H W + b d_h W + c d_w: for a block of `L` positions the depth taps are `k_d` slices of the flattened
    input side by side `[L, k_d C_in]`, the in-plane taps `k_h k_w` shifted slices of the cotangent
    `[L, k_h k_w C_out]` (the cotangent shifted by -o against the input equals the input shifted by +o against
    the cotangent), and their product over the block sums into `[k_d C_in, k_h k_w C_out]` in f32. Blocks hold
    at most SLAB_DW_PATCH elements of both (unless one padded row is longer). `rhs`: the kernel (shape, dtype).
    Splitting the taps between the two sides keeps both copies and the matmul's output small: 96^3 x 16 -> 16
    190 ms, 32 -> 16 330 ms, 48^3 x 64 -> 32 115 ms, against 230-270 / 400-460 / 125-130 ms with all 27 taps as
    im2col patches of the input per block of rows of one depth slice (`gazejax.bench.convs` layers)."""
    kd, kh, kw, c_in, c_out = rhs.shape
    b, _, hp, wp, _ = x.shape
    (d_out, h_out, w_out), (dd, dh, dw) = out, dilation
    x_offs = [a * dd * hp * wp for a in range(kd)]
    g_offs = [i * dh * wp + j * dw for i, j in itertools.product(range(kh), range(kw))]
    g_max = g_offs[-1]
    span = d_out * hp * wp + g_max  # flattened positions whose products can be nonzero
    size = max(wp, SLAB_DW_PATCH // (kd * c_in + kh * kw * c_out))
    blocks = -(-span // size)
    # the cotangent at padded-stride positions, g_max zeros in front (position p + g_max holds output position p)
    gf = _pad(g.astype(x.dtype), ((0, 0), (0, hp - h_out), (0, wp - w_out)))
    gf = jnp.pad(gf.reshape(b, -1, c_out), ((0, 0), (g_max, blocks * size - d_out * hp * wp), (0, 0)))
    xf = x.reshape(b, -1, c_in)
    xf = jnp.pad(xf, ((0, 0), (0, blocks * size + x_offs[-1] - xf.shape[1]), (0, 0)))

    def body(acc, i):
        n, p = i // blocks, (i % blocks) * size
        xs = [lax.dynamic_slice(xf, (n, p + o, 0), (1, size, c_in)).reshape(size, c_in) for o in x_offs]
        gs = lax.dynamic_slice(gf, (n, p, 0), (1, size + g_max, c_out)).reshape(size + g_max, c_out)
        gs = [gs[g_max - o:g_max - o + size] for o in g_offs]
        xs, gs = (v[0] if len(v) == 1 else jnp.concatenate(v, axis=1) for v in (xs, gs))
        return acc + lax.dot_general(xs, gs, (((0,), (0,)), ((), ())), precision=precision,
                                     preferred_element_type=jnp.float32), None

    acc, _ = lax.scan(body, jnp.zeros((kd * c_in, kh * kw * c_out), jnp.float32), jnp.arange(b * blocks))
    acc = jnp.moveaxis(acc.reshape(kd, c_in, kh, kw, c_out), 1, 3)
    return acc.reshape(rhs.shape).astype(rhs.dtype)


# ---- grouped convolutions (onednn) --------------------------------------------------------------------------------
# oneDNN runs a grouped convolution's forward fast (48^3 32 -> 64 in 16 groups, stride 2: 8 ms) but not XLA's
# gradients of it: the input gradient of a strided one (an input-dilated convolution) takes 3.5 s there, the
# filter gradient (the whole volume as a window) 130-1600 ms. `_grouped_bwd` computes them from stride-1
# convolutions oneDNN runs well and from matmuls.
# Filter gradients take the dense slab (all C_in x C_out pairs, the groups' blocks kept; groups x the FLOPs, but
# one large matmul) from this many voxels per output depth slice on, else one einsum per tap (24^3 x 64 in 16
# groups: 55 vs 116 ms; 12^3 x 128: 24 vs 16 ms; native 421 / 160 ms).
GROUPED_DENSE_MIN_SLICE = 256


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _grouped(x, rhs, padding, strides, dilation, groups, precision, slab):
    """The native grouped convolution of unpadded `x` (float32 out) with `_grouped_bwd`'s gradients."""
    return _native_conv(x, rhs, padding, strides, dilation, precision, groups)


def _grouped_fwd(x, rhs, padding, strides, dilation, groups, precision, slab):
    return _native_conv(x, rhs, padding, strides, dilation, precision, groups), (x, rhs)


def _grouped_bwd(padding, strides, dilation, groups, precision, slab, residuals, g):
    """dx: the native (oneDNN) one at stride 1, else through `_phase_sum` (stride-1 convolutions); dW:
    `_grouped_filter_grad`."""
    x, rhs = residuals
    if all(s == 1 for s in strides):
        _, dx_fn = jax.vjp(lambda a: _native_conv(a, rhs, padding, strides, dilation, precision, groups), x)
    else:
        out = g.shape[1:-1]
        _, dx_fn = jax.vjp(lambda a: _phase_sum(_pad(a, padding), rhs, out, strides, dilation, groups, precision), x)
    dw = _grouped_filter_grad(_pad(x, padding), g, rhs, strides, dilation, groups, precision, slab)
    return dx_fn(g)[0], dw


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def _phase_sum(x: jax.Array, rhs: jax.Array, out: Sequence[int], strides: Sequence[int],
               dilation: Sequence[int], groups: int, precision: Any) -> jax.Array:
    """Padded `x`'s strided VALID convolution as a sum of stride-1 ones, one per stride phase q (per axis, the taps
    t with t * dilation = m * stride + q read `x[q::stride]` at offset m): the same values, and a gradient made of
    stride-1 convolutions."""
    per_axis = []
    for k, d, s in zip(rhs.shape, dilation, strides):
        phases = []
        for q in range(s):
            taps = [t for t in range(k) if (t * d) % s == q]
            if taps:  # consecutive taps of one phase are d / gcd(d, s) apart in the phase's own grid
                phases.append((q, taps, (taps[0] * d) // s, d // math.gcd(d, s)))
        per_axis.append(phases)
    y = 0
    for combo in itertools.product(*per_axis):
        start = [q + s * m0 for (q, _, m0, _), s in zip(combo, strides)]
        limit = [st + s * (o - 1 + (len(t) - 1) * dd) + 1
                 for st, (_, t, _, dd), s, o in zip(start, combo, strides, out)]
        xs = lax.slice(x, [0, *start, 0], [x.shape[0], *limit, x.shape[-1]], [1, *strides, 1])
        w = rhs[np.ix_(*[t for _, t, _, _ in combo])]
        y = y + lax.conv_general_dilated(xs, w, (1,) * len(out), "VALID", None, [dd for *_, dd in combo],
                                         _channels_last(x.ndim), feature_group_count=groups, precision=precision,
                                         preferred_element_type=jnp.float32)
    return y


def _grouped_filter_grad(x: jax.Array, g: jax.Array, rhs: jax.Array, strides: Sequence[int],
                         dilation: Sequence[int], groups: int, precision: Any, slab: bool) -> jax.Array:
    """Filter gradient `[*K, C_in / G, C_out]` of padded `x`'s VALID grouped convolution given its output cotangent
    `g`: the block diagonal of `_slab_filter_grad`'s dense one for 3D, stride 1 and output slices of
    >= GROUPED_DENSE_MIN_SLICE voxels (`slab`: not under `counting`), else one `[N, G, C_in/G] x [N, G, C_out/G]`
    einsum per kernel tap (strided views)."""
    out = g.shape[1:-1]
    kernel, (cg, co) = rhs.shape[:-2], rhs.shape[-2:]
    og = co // groups
    if len(out) == 3 and all(s == 1 for s in strides) and slab and out[1] * out[2] >= GROUPED_DENSE_MIN_SLICE:
        dense_shape = jax.ShapeDtypeStruct((*kernel, groups * cg, co), rhs.dtype)
        dense = _slab_filter_grad(x, g, dense_shape, tuple(out), tuple(dilation), precision)
        blocks = jnp.diagonal(dense.reshape(-1, groups, cg, groups, og), axis1=1, axis2=3)  # [T, cg, og, G]
        return blocks.transpose(0, 1, 3, 2).reshape(rhs.shape).astype(rhs.dtype)
    gg = g.astype(x.dtype).reshape(-1, groups, og)
    taps = [jnp.einsum("ngi,ngo->igo", _view(x, tap, dilation, strides, out).reshape(-1, groups, cg), gg,
                       precision=precision, preferred_element_type=jnp.float32)
            for tap in itertools.product(*map(range, kernel))]
    return jnp.stack(taps).reshape(rhs.shape).astype(rhs.dtype)
