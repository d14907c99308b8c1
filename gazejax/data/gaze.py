"""Fixations -> gaze heat maps: a sum of 2D/3D Gaussians rendered analytically and separably at the target
resolution (numpy and JAX, never a full-resolution image), the GG-CAM / GazAT / REFLACX recipes, and reader pooling.

Conventions (DESIGN.md "Gaze heat maps"):
- Points `[N, d]` (d = 2 or 3) are continuous pixel/voxel indices of the ORIGINAL image in array-axis order:
  (row, col) = (y, x) for a radiograph `[H, W]`, (i, j, k) for a BraTS volume `[X, Y, Z]`. Pixel i covers
  [i - 0.5, i + 0.5]; its centre is i.
- The target grid resamples the frame extent `in_shape` onto `out_shape` cells: along an axis, with
  s = in_len / out_len, cell o covers [o*s - 0.5, (o+1)*s - 0.5]; its centre is (o + 0.5)*s - 0.5.
- mode="area": a cell holds the exact mean of the continuous map over the cell (via erf): the limit of "blur at full
  resolution, then area-downsample". mode="center": the map's value at the cell centre.
- amplitude="mass": each fixation is a Gaussian density of unit integral (per original pixel^d), as a blurred dot
  histogram or REFLACX's `multivariate_normal.pdf`; amplitude="peak": peak 1, as GazAT's A_g. Both are scaled by
  the fixation's weight (its duration when known). With one sigma for all fixations they differ by a constant.
- Mass falling outside the frame is lost (zero padding, nothing reflected back, no renormalisation at borders).
- `transform=(scale [d], offset [d])` maps original coordinates into another frame before rendering
  (new = old*scale + offset, sigma *= |scale|); `in_shape` is then that frame's extent (e.g. the padded image).
  `pad_resize_transform` builds it for "pad, then resize" under the pixel-centre convention.
- `truncate` (in sigmas) cuts each Gaussian to the box |x - mu| <= truncate*sigma per axis and renormalises its
  mass, reproducing a finite blur kernel (scipy's `truncate`, OpenCV's ksize); None keeps the exact Gaussian.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.special as jax_special
import numpy as np
import scipy.special as np_special

_MODES = ("area", "center")
_AMPLITUDES = ("mass", "peak")
_NORMALIZATIONS = ("max", "minmax", "sum", None)
# 4-point Gauss-Legendre rule: erf differences over intervals of width <= 0.5 to ~1e-9, free of cancellation.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)


class AffineTransform(NamedTuple):
    """Per-axis map of original coordinates into a new frame: new = old * scale + offset; sigma *= |scale|."""

    scale: Any  # scalar or [d]
    offset: Any  # scalar or [d]


def pad_resize_transform(pad_before: Sequence[float], scale: float | Sequence[float] = 1.0) -> AffineTransform:
    """Transform for "pad `pad_before` pixels at the start of each axis, then resize by `scale`".

    Resizing keeps the image edge -0.5 at -0.5, so new = (old + pad + 0.5) * scale - 0.5.
    """
    pad = np.asarray(pad_before, np.float64)
    scale = np.broadcast_to(np.asarray(scale, np.float64), pad.shape)
    return AffineTransform(scale, (pad + 0.5) * scale - 0.5)


class _Backend(NamedTuple):
    xp: Any
    erfc: Callable
    matmul: Callable


_NUMPY = _Backend(np, np_special.erfc, np.matmul)
# Full float32 products: TPUs (bf16 passes) and GPUs (TF32) would otherwise round the map to ~1e-3.
_JAX = _Backend(jnp, jax_special.erfc, functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))


def _fail(message: str) -> ValueError:
    return ValueError(f"gazejax.data.gaze: {message}")


def _erf_diff(bk: _Backend, mid, half):
    """erf(mid + half) - erf(mid - half) for half >= 0, accurate in float32 also for narrow cells and far tails."""
    xp = bk.xp
    mid = xp.abs(mid)  # the difference is even in mid; mid >= 0 keeps b = mid + half off erfc's cancelling side

    def gauss_legendre(m, h):  # narrow cells: quadrature of 2/sqrt(pi) exp(-t^2), no cancellation
        # A loop over the 4 nodes: numpy is ~5x slower with a trailing node axis of length 4.
        total = sum(float(wk) * xp.exp(-(m + h * float(xk)) ** 2) for xk, wk in zip(_GL_NODES, _GL_WEIGHTS))
        return (2 / math.sqrt(math.pi)) * h * total

    def erfc_diff(m, h):  # wide cells: erf(b) - erf(a) = erfc(a) - erfc(b) keeps tail cells (a > 0) precise
        return bk.erfc(m - h) - bk.erfc(m + h)

    narrow = half <= 0.25
    if xp is np and narrow.all():  # eager numpy, all cells narrower than ~0.7 sigma (the usual case): skip erfc
        return gauss_legendre(mid, half)
    return xp.where(narrow, gauss_legendre(mid, half), erfc_diff(mid, half))


def _axis_factor(bk: _Backend, mu, sigma, in_len: int, out_len: int, mode: str, amplitude: str,
                 truncate: float | None):
    """[N, out_len]: each fixation's 1D Gaussian (mean mu [N], std sigma [N]) sampled on one axis of the grid."""
    xp = bk.xp
    s = in_len / out_len
    o = xp.arange(out_len, dtype=mu.dtype)[None, :]
    mu, sigma = mu[:, None], sigma[:, None]
    centre = (o + 0.5) * s - 0.5 - mu  # [N, out_len] cell centres relative to the mean
    if mode == "center":
        z = centre / sigma
        val = xp.exp(-0.5 * z**2)
        if truncate is not None:
            val = xp.where(xp.abs(z) <= truncate, val, 0.0)
        if amplitude == "mass":
            val = val / (math.sqrt(2 * math.pi) * sigma)
    else:
        half = xp.full_like(centre, s / 2)  # exact, where hi - lo would cancel in float32
        if truncate is not None:  # shrink each cell to its overlap with the kernel's box [-cut, cut]
            cut = truncate * sigma
            over_hi, over_lo = xp.maximum(centre + half - cut, 0.0), xp.maximum(-cut - centre + half, 0.0)
            centre, half = centre + 0.5 * (over_lo - over_hi), xp.maximum(half - 0.5 * (over_hi + over_lo), 0.0)
        d = _erf_diff(bk, centre / (math.sqrt(2) * sigma), half / (math.sqrt(2) * sigma))
        # Integral over the cell of exp(-z^2/2) is sigma*sqrt(pi/2)*d; of the unit density, d/2. Divide by width s.
        val = d / (2 * s) if amplitude == "mass" else d * sigma * (math.sqrt(math.pi / 2) / s)
    if truncate is not None and amplitude == "mass":
        val = val / math.erf(truncate / math.sqrt(2))  # finite blur kernels are renormalised to unit sum
    return val


def _sigma_per_point(xp, sigma, n: int, d: int, dtype):
    """sigma (scalar | [d] | [N] | [N, d], or anything broadcastable to [N, d]) -> [N, d]."""
    sigma = xp.asarray(sigma, dtype)
    if sigma.ndim == 1:
        if sigma.shape[0] == d and n == d:
            raise _fail(f"sigma of shape ({d},) is ambiguous with {n} points in {d}D; pass [1, {d}] (per axis) or "
                        f"[{n}, 1] (per fixation)")
        if sigma.shape[0] == d:
            sigma = sigma[None, :]
        elif sigma.shape[0] == n:
            sigma = sigma[:, None]
    if sigma.ndim > 2 or (sigma.ndim == 1 and sigma.shape[0] != 1):
        raise _fail(f"sigma of shape {sigma.shape} is not scalar, [{d}], [{n}] or [{n}, {d}]")
    try:
        return xp.broadcast_to(sigma, (n, d))
    except ValueError:
        raise _fail(f"sigma of shape {sigma.shape} does not broadcast to [{n}, {d}]") from None


def _prepare(bk: _Backend, points, weights, sigma, transform, dtype):
    """(points [N, d], weights [N], sigma [N, d]) in the rendering frame."""
    xp = bk.xp
    points = xp.asarray(points, dtype)
    n, d = points.shape
    weights = xp.ones((n,), dtype) if weights is None else xp.asarray(weights, dtype)
    if weights.shape != (n,):
        raise _fail(f"weights of shape {weights.shape} do not match {n} points")
    sigma = _sigma_per_point(xp, sigma, n, d, dtype)
    if transform is not None:
        scale, offset = (xp.broadcast_to(xp.asarray(t, dtype), (d,)) for t in transform)
        points, sigma = points * scale + offset, sigma * xp.abs(scale)
    return points, weights, sigma


def _render(bk: _Backend, points, weights, sigma, in_shape, out_shape, mode, amplitude, truncate):
    """Separable sum of Gaussians: sum_n w_n prod_k F_k[n, o_k] from one [N, out_len] factor F_k per axis."""
    xp, n = bk.xp, points.shape[0]
    factors = [_axis_factor(bk, points[:, k], sigma[:, k], in_shape[k], out_shape[k], mode, amplitude, truncate)
               for k in range(len(in_shape))]
    # float32 from here (the map's dtype): float32 BLAS is several times faster than float64 in numpy.
    lead = xp.asarray(factors[0] * weights[:, None], xp.float32)
    for factor in factors[1:-1]:  # outer product of all axes but the last, [N, a*b]; then one matmul with it
        lead = (lead[:, :, None] * xp.asarray(factor, xp.float32)[:, None, :])
        lead = lead.reshape(n, lead.shape[1] * lead.shape[2])
    # (np.einsum(optimize=True) is 2x slower in 2D and 10x slower in 3D than this one product.)
    return bk.matmul(lead.T, xp.asarray(factors[-1], xp.float32)).reshape(out_shape)


def _normalize(xp, m, how: str | None):
    if how is None:
        return m
    if how == "minmax":
        lo, span = m.min(), m.max() - m.min()
        return xp.where(span > 0, (m - lo) / xp.where(span > 0, span, 1), 0 * m)
    den = m.max() if how == "max" else m.sum()
    return xp.where(den > 0, m / xp.where(den > 0, den, 1), m)


def normalize_map(m: np.ndarray, how: str | None) -> np.ndarray:
    """Normalise a heat map (float32 out): "max" -> m / max (peak 1), "minmax" -> (m - min) / (max - min) in [0, 1],
    "sum" -> m / sum (a distribution), None -> unchanged. An all-zero map stays zero ("minmax": a constant map
    becomes zeros); no NaN is produced.
    """
    if how not in _NORMALIZATIONS:
        raise _fail(f"normalize must be one of {_NORMALIZATIONS}, got {how!r}")
    return np.asarray(_normalize(np, np.asarray(m, np.float64), how), np.float32)


def _check_options(d: int, in_shape, out_shape, mode, normalize, amplitude, truncate) -> tuple[tuple, tuple]:
    in_shape, out_shape = tuple(int(v) for v in in_shape), tuple(int(v) for v in out_shape)
    if len(in_shape) not in (2, 3) or len(out_shape) != len(in_shape) or d != len(in_shape):
        raise _fail(f"points [N, {d}], in_shape {in_shape} and out_shape {out_shape} must all be 2D or all 3D")
    if min(in_shape + out_shape) < 1:
        raise _fail(f"in_shape {in_shape} and out_shape {out_shape} must be positive")
    for name, value, allowed in (("mode", mode, _MODES), ("normalize", normalize, _NORMALIZATIONS),
                                 ("amplitude", amplitude, _AMPLITUDES)):
        if value not in allowed:
            raise _fail(f"{name} must be one of {allowed}, got {value!r}")
    if truncate is not None and not truncate > 0:
        raise _fail(f"truncate must be None or > 0 sigmas, got {truncate!r}")
    return in_shape, out_shape


def _points_2d(points, in_shape) -> np.ndarray:
    points = np.asarray(points, np.float64)
    if points.size == 0:
        return points.reshape(0, len(tuple(in_shape)))
    if points.ndim != 2:
        raise _fail(f"points must be [N, d], got shape {points.shape}")
    return points


def render_gaussians(points, weights, sigma, in_shape: Sequence[int], out_shape: Sequence[int], mode: str = "area",
                     normalize: str | None = "max", transform: AffineTransform | None = None, *,
                     amplitude: str = "mass", truncate: float | None = None) -> np.ndarray:
    """Heat map `[*out_shape]` float32 = normalize(sum_n weights[n] * Gaussian(points[n], sigma[n])) on the grid.

    points [N, d] and sigma (scalar | [d] | [N] | [N, d]) in original pixels; weights [N] or None (all 1); grid,
    modes, amplitude, transform and truncate as in the module docstring. No points -> zeros.
    """
    points = _points_2d(points, in_shape)
    in_shape, out_shape = _check_options(points.shape[1], in_shape, out_shape, mode, normalize, amplitude, truncate)
    points, weights, sigma = _prepare(_NUMPY, points, weights, sigma, transform, np.float64)
    if not (np.isfinite(points).all() and np.isfinite(weights).all() and np.isfinite(sigma).all()):
        raise _fail("points, weights and sigma must be finite")
    if not (sigma > 0).all():
        raise _fail(f"sigma must be > 0, got min {sigma.min():g}")
    m = _render(_NUMPY, points, weights, sigma, in_shape, out_shape, mode, amplitude, truncate)
    return np.asarray(_normalize(np, m, normalize), np.float32)


@functools.partial(jax.jit, static_argnames=("in_shape", "out_shape", "mode", "normalize", "amplitude", "truncate"))
def _render_jax(points, weights, sigma, valid, transform, *, in_shape, out_shape, mode, normalize, amplitude,
                truncate):
    points = jnp.asarray(points, jnp.float32)
    valid = jnp.ones(points.shape[:1], bool) if valid is None else jnp.asarray(valid, bool)
    points, weights, sigma = _prepare(_JAX, points, weights, sigma, transform, jnp.float32)
    # Padding may hold anything (NaN, 0 sigma): replace it by harmless values, then give it zero weight.
    points = jnp.where(valid[:, None], points, 0.0)
    sigma = jnp.where(valid[:, None], sigma, 1.0)
    weights = jnp.where(valid, weights, 0.0)
    m = _render(_JAX, points, weights, sigma, in_shape, out_shape, mode, amplitude, truncate)
    return _normalize(jnp, m, normalize)


def render_gaussians_jax(points, weights, sigma, in_shape: Sequence[int], out_shape: Sequence[int],
                         mode: str = "area", normalize: str | None = "max",
                         transform: AffineTransform | None = None, *, valid=None, amplitude: str = "mass",
                         truncate: float | None = None) -> jax.Array:
    """`render_gaussians` in JAX (float32, jitted; traceable inside jit/vmap/grad).

    Shapes are static: pad the fixations to a fixed N with `pad_points` and pass `valid` [N] (None = all valid);
    padded entries (their points, weights and per-fixation sigma) are ignored whatever they hold. Values are not
    checked under tracing: valid sigma must be > 0 and points finite.
    """
    if np.ndim(points) != 2:
        raise _fail(f"points must be [N, d], got shape {np.shape(points)}")
    in_shape, out_shape = _check_options(np.shape(points)[1], in_shape, out_shape, mode, normalize, amplitude,
                                         truncate)
    return _render_jax(points, weights, sigma, valid, transform, in_shape=in_shape, out_shape=out_shape, mode=mode,
                       normalize=normalize, amplitude=amplitude, truncate=truncate)


def pad_points(points, weights, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad fixations to a static count: (points [n_max, d] f32, weights [n_max] f32 (0 in padding), valid [n_max]).

    points must be [N, d] with N <= n_max (an empty set is [0, d]); weights None means 1 per fixation. Pad a
    per-fixation sigma to n_max yourself (any fill value: padded entries are ignored).
    """
    points = np.asarray(points, np.float32)
    if points.ndim != 2:
        raise _fail(f"pad_points: points must be [N, d] (an empty set is [0, d]), got shape {points.shape}")
    n = points.shape[0]
    if n > n_max:
        raise _fail(f"pad_points: {n} fixations exceed n_max={n_max}")
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    if weights.shape != (n,):
        raise _fail(f"pad_points: weights of shape {weights.shape} do not match {n} points")
    valid = np.arange(n_max) < n
    return (np.pad(points, ((0, n_max - n), (0, 0))), np.pad(weights, (0, n_max - n)), valid)


def ggcam_heatmap(points, in_shape: Sequence[int], out_shape: Sequence[int], blur: float = 500.0, *,
                  blur_parameter: str = "sigma", weights=None, mode: str = "area",
                  transform: AffineTransform | None = None) -> np.ndarray:
    """Visual heat map Psi of GG-CAM (Algorithm 1, Zhu et al.) `[H, W]` float32 in [0, 1], rendered analytically.

    Algorithm 1: a 2D histogram H(E_1:M) with one bin per image pixel of the tracked gaze positions E_1..E_M
    (raw samples at a fixed rate, each counting 1, so time spent is weighted implicitly; no explicit durations),
    a Gaussian blur G(.; B) with standard deviation B pixels of the original image, resampling to H x W and
    normalisation to [0, 1] (by the max, as the public code does). Blurring a histogram = a sum of unit-mass
    Gaussians, so this renders them directly (bins quantise positions to pixel centres; here they stay exact).
    Pass fixations with `weights=durations` for the fixation-level equivalent. Paper, Table 1: B = 600 (EffNet),
    500 (ResNet); insensitive for B in [200, 1000].

    blur_parameter="opencv_ksize" reproduces the public code (hz-zhu/GG-CAM), which passes B to cv.GaussianBlur
    as the kernel SIZE with sigma 0: std = 0.3*((k-1)/2 - 1) + 0.8 (75.5 px for B = 500), kernel cut at
    (k-1)/2 px. That code blurs with OpenCV's reflecting border, then zero-pads to 3072x2560 (here: render in that
    frame via `pad_resize_transform`, mass leaving it is lost) and keeps every 64th pixel from pixel 0 (half a
    cell off the centre that mode="center" samples).
    """
    if blur_parameter == "sigma":
        sigma, truncate = float(blur), None
    elif blur_parameter == "opencv_ksize":
        k = int(blur) + (1 - int(blur) % 2)  # the code makes an even B odd
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV getGaussianKernel with sigma <= 0
        truncate = ((k - 1) / 2 + 0.5) / sigma  # the last tap's pixel ends half a pixel past its centre
    else:
        raise _fail(f"blur_parameter must be 'sigma' or 'opencv_ksize', got {blur_parameter!r}")
    return render_gaussians(points, weights, sigma, in_shape, out_shape, mode=mode, normalize="max",
                            transform=transform, amplitude="mass", truncate=truncate)


def duration_weighted_map(points, durations, sigma, in_shape: Sequence[int], out_shape: Sequence[int],
                          mode: str = "area", transform: AffineTransform | None = None) -> np.ndarray:
    """GazAT attention map (Sec. 2.2.2) `[*out_shape]` float32 in [0, 1].

    A_g(x) = sum_i d_i * exp(-|x - x_i|^2 / (2 sigma^2)) (peak-1 Gaussians weighted by duration d_i), then
    min-max normalised over the grid: (A_g - min) / (max - min). mode="center" evaluates A_g at cell centres
    (the equation as written when out_shape == in_shape); "area" averages it over each cell.
    """
    return render_gaussians(points, durations, sigma, in_shape, out_shape, mode=mode, normalize="minmax",
                            transform=transform, amplitude="peak")


def reflacx_sigma(ppd_x, ppd_y, degrees: float = 1.0) -> np.ndarray:
    """Per-fixation sigma `[N, 2]` in (row, col) = (y, x) order: degrees of visual angle * pixels per degree.

    REFLACX's official heat map (ricbl/eyetracking) is one Gaussian density per fixation with this sigma at
    1 degree, weighted by duration, normalised to sum 1: `render_gaussians(points_yx, durations,
    reflacx_sigma(ppd_x, ppd_y), shape, shape, normalize="sum")`. That code also clips each Gaussian to the
    shown-image rectangle (xmin/ymin/xmax/ymax_shown_from_image); readers handle fixations outside it.
    """
    ppd_x, ppd_y = np.asarray(ppd_x, np.float64), np.asarray(ppd_y, np.float64)
    if ppd_x.shape != ppd_y.shape or ppd_x.ndim > 1:
        raise _fail(f"reflacx_sigma: ppd_x {ppd_x.shape} and ppd_y {ppd_y.shape} must be equal [N] columns")
    return (degrees * np.stack([np.atleast_1d(ppd_y), np.atleast_1d(ppd_x)], axis=-1)).astype(np.float32)


def aggregate_readers(maps, weights=None, how: str = "mean", normalize: str | None = "max") -> np.ndarray:
    """Pool several readers' heat maps `[R, ...]` (or a list) into one float32 map (GazAT Sec. 2.2.2, step 4).

    how="mean": the plain mean; how="weighted": sum_r w_r * map_r / sum_r w_r with non-negative `weights` [R]
    (e.g. years of experience). The result is re-normalised with `normalize_map(., normalize)`.
    """
    maps = np.asarray(maps, np.float64)
    if maps.ndim < 2 or maps.shape[0] == 0:
        raise _fail(f"aggregate_readers: maps must be [R, ...] with R >= 1, got shape {maps.shape}")
    if how == "mean":
        if weights is not None:
            raise _fail("aggregate_readers: weights given with how='mean'; use how='weighted'")
        pooled = maps.mean(axis=0)
    elif how == "weighted":
        w = np.asarray(weights if weights is not None else [], np.float64)
        if w.shape != maps.shape[:1] or (w < 0).any() or not w.sum() > 0:
            raise _fail(f"aggregate_readers: how='weighted' needs {maps.shape[0]} non-negative weights with a "
                        f"positive sum, got {weights!r}")
        pooled = np.tensordot(w, maps, axes=1) / w.sum()
    else:
        raise _fail(f"aggregate_readers: how must be 'mean' or 'weighted', got {how!r}")
    return normalize_map(pooled, normalize)
