"""Tests of gazejax.data.gaze against independent truths: direct sums of Gaussians (quadrature over each cell, or values
at cell centres), scipy's blur-then-downsample, the papers' formulas and hand-computed normalisations."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from gazejax.data import gaze


def _direct_sum(grid, points, weights, sigma, amplitude):
    """Sum of Gaussians evaluated point by point at grid [..., d] (no separability, no erf)."""
    z = (grid[..., None, :] - points) / sigma  # [..., N, d]
    g = np.exp(-0.5 * (z**2).sum(-1))
    if amplitude == "mass":
        g = g / np.prod(math.sqrt(2 * math.pi) * sigma, axis=-1)
    return g @ weights


def _quadrature_area(points, weights, sigma, in_shape, out_shape, amplitude="mass", q=16):
    """Mean of the directly evaluated map over each cell: tensor Gauss-Legendre rule with q nodes per cell axis."""
    x, w = np.polynomial.legendre.leggauss(q)
    coords, cell_w = [], []
    for n_in, n_out in zip(in_shape, out_shape):
        s = n_in / n_out
        coords.append((np.arange(n_out)[:, None] * s - 0.5 + s * (x + 1) / 2).ravel())  # cell o covers [os-.5, ...]
        cell_w.append(np.tile(w / 2, n_out))
    f = _direct_sum(np.stack(np.meshgrid(*coords, indexing="ij"), -1), points, weights,
                    np.broadcast_to(sigma, points.shape), amplitude)
    for k, cw in enumerate(cell_w):
        f = np.moveaxis(np.moveaxis(f, k, -1) * cw, -1, k)
    split = [v for n in out_shape for v in (n, q)]
    return f.reshape(split).sum(axis=tuple(range(1, 2 * len(out_shape), 2)))


def _centres(in_shape, out_shape):
    axes = [(np.arange(o) + 0.5) * (i / o) - 0.5 for i, o in zip(in_shape, out_shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


def _rel_err(a, b):
    return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


# Fixations inside, near an edge and just outside the 40 x 30 image; durations as weights.
POINTS_2D = np.array([[10.3, 7.8], [0.2, 29.4], [39.9, 0.1], [22.0, 15.5], [-1.5, 12.0], [31.7, 24.2]])
DURATIONS = np.array([0.25, 0.8, 0.1, 1.3, 0.4, 0.6])
SIGMA_2D = np.array([[2.0, 3.0], [1.5, 1.5], [4.0, 2.5], [3.0, 1.2], [2.0, 2.0], [5.0, 3.5]])


@pytest.mark.parametrize("amplitude", ["mass", "peak"])
@pytest.mark.parametrize("out_shape", [(8, 12), (40, 30), (7, 11)])  # anisotropic (5, 2.5), identity, non-integer
def test_area_mode_matches_quadrature_2d(amplitude, out_shape):
    got = gaze.render_gaussians(POINTS_2D, DURATIONS, SIGMA_2D, (40, 30), out_shape, normalize=None,
                                amplitude=amplitude)
    want = _quadrature_area(POINTS_2D, DURATIONS, SIGMA_2D, (40, 30), out_shape, amplitude)
    assert got.shape == out_shape and got.dtype == np.float32
    assert _rel_err(got, want) < 1e-5


def test_area_mode_matches_quadrature_3d():
    points = np.array([[5.5, 3.0, 2.2], [0.4, 19.6, 14.0], [12.0, 10.0, 7.5], [23.1, 0.0, 9.9]])
    sigma = np.array([2.0, 3.0, 1.5])  # per axis
    got = gaze.render_gaussians(points, [1.0, 0.5, 2.0, 0.7], sigma, (24, 20, 15), (6, 5, 3), normalize=None)
    want = _quadrature_area(points, np.array([1.0, 0.5, 2.0, 0.7]), sigma, (24, 20, 15), (6, 5, 3), q=12)
    assert _rel_err(got, want) < 1e-5


@pytest.mark.parametrize("in_shape,out_shape", [((40, 30), (7, 11)), ((24, 20, 15), (6, 5, 4))])
def test_center_mode_is_the_value_at_cell_centres(in_shape, out_shape):
    d = len(in_shape)
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, (5, d)) * np.array(in_shape) + np.array(in_shape) / 2
    sigma = rng.uniform(2.0, 4.0, (5, d))
    got = gaze.render_gaussians(points, DURATIONS[:5], sigma, in_shape, out_shape, mode="center", normalize=None,
                                amplitude="peak")
    want = _direct_sum(_centres(in_shape, out_shape), points, DURATIONS[:5], sigma, "peak")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * want.max())
    # truncate: each Gaussian is zero outside its box |x - mu| <= 1.5 sigma (per axis)
    cut = gaze.render_gaussians(points[:1], None, sigma[:1], in_shape, out_shape, mode="center", normalize=None,
                                amplitude="peak", truncate=1.5)
    inside = (np.abs(_centres(in_shape, out_shape) - points[0]) <= 1.5 * sigma[0]).all(-1)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_allclose(cut, np.where(inside, _direct_sum(_centres(in_shape, out_shape), points[:1],
                                                                 np.ones(1), sigma[:1], "peak"), 0), rtol=1e-6)


def test_area_mode_is_blur_then_area_downsample():
    """The limit the area mode stands for: dots at pixel centres, full-resolution blur, mean over 4x4 blocks."""
    points = np.array([[12, 9], [40, 30], [63, 2], [25, 44]])
    dots = np.zeros((64, 48))
    np.add.at(dots, tuple(points.T), DURATIONS[:4])
    blurred = ndimage.gaussian_filter(dots, 8.0, mode="constant", truncate=8.0)
    want = blurred.reshape(16, 4, 12, 4).mean(axis=(1, 3))
    got = gaze.render_gaussians(points, DURATIONS[:4], 8.0, (64, 48), (16, 12), normalize=None)
    assert _rel_err(got, want) < 2e-3  # pixel-centre sampling of the kernel: error ~ d/(24 sigma^2)
    shifted = gaze.render_gaussians(points + 0.5, DURATIONS[:4], 8.0, (64, 48), (16, 12), normalize=None)
    assert _rel_err(shifted, want) > 1e-2  # a half-pixel convention slip would be caught


def test_truncate_reproduces_a_finite_kernel():
    points = np.array([[30, 20], [5, 44]])
    dots = np.zeros((60, 50))
    np.add.at(dots, tuple(points.T), [1.0, 2.0])
    blurred = ndimage.gaussian_filter(dots, 6.0, mode="constant", truncate=1.5)  # radius int(9.5) = 9 px
    want = blurred.reshape(12, 5, 10, 5).mean(axis=(1, 3))
    got = gaze.render_gaussians(points, [1.0, 2.0], 6.0, (60, 50), (12, 10), normalize=None, truncate=9.5 / 6.0)
    assert _rel_err(got, want) < 3e-3
    untruncated = gaze.render_gaussians(points, [1.0, 2.0], 6.0, (60, 50), (12, 10), normalize=None)
    assert _rel_err(untruncated, want) > 1e-2


def test_jax_matches_numpy_with_padding_and_transform():
    transform = gaze.pad_resize_transform((3, 5), (0.5, 0.75))
    want = gaze.render_gaussians(POINTS_2D, DURATIONS, SIGMA_2D, (23, 26), (8, 12), transform=transform)
    pts, w, valid = gaze.pad_points(POINTS_2D, DURATIONS, 16)
    sigma = np.pad(SIGMA_2D, ((0, 10), (0, 0)))  # zero sigma in the padding must not matter
    got = gaze.render_gaussians_jax(jnp.asarray(pts), w, sigma, (23, 26), (8, 12), transform=transform, valid=valid)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    got3 = gaze.render_gaussians_jax(jnp.asarray(pts[:, :1].repeat(3, 1)), w, 2.0, (10, 12, 8), (5, 6, 4),
                                     mode="center", valid=valid)
    want3 = gaze.render_gaussians(POINTS_2D[:, :1].repeat(3, 1), DURATIONS, 2.0, (10, 12, 8), (5, 6, 4),
                                  mode="center")
    np.testing.assert_allclose(np.asarray(got3), want3, atol=1e-5)


def test_jax_float32_keeps_precision_in_narrow_cells_and_tails():
    """Plain float32 erf(b) - erf(a) cancels: ~1e-5 relative error for cells << sigma, 100% in far tails."""
    fine = gaze.render_gaussians([[300.0, 2.0]], None, [[150.0, 1.0]], (600, 4), (600, 4), normalize=None)
    fine_jax = gaze.render_gaussians_jax([[300.0, 2.0]], None, [[150.0, 1.0]], (600, 4), (600, 4), normalize=None)
    assert _rel_err(fine_jax, fine) < 1e-6
    for row in (5.0, 54.0):  # far tails on both sides of the mean
        far = gaze.render_gaussians([[row, 1.0]], None, [[1.2, 1.0]], (60, 4), (6, 2), normalize=None)
        far_jax = np.asarray(gaze.render_gaussians_jax([[row, 1.0]], None, [[1.2, 1.0]], (60, 4), (6, 2),
                                                       normalize=None))
        assert far[:, 0].min() < 1e-20 * far.max()  # the farthest cells lie ~20 sigma away
        np.testing.assert_allclose(far_jax[:, 0], far[:, 0], rtol=1e-4)


def test_jax_ignores_padding_whatever_it_holds():
    pts, w, valid = gaze.pad_points(POINTS_2D, DURATIONS, 16)
    assert valid.sum() == 6 and (w[6:] == 0).all() and pts.dtype == np.float32
    junk_pts, junk_w = pts.copy(), w.copy()
    junk_pts[6:], junk_w[6:] = np.nan, 5.0
    clean = gaze.render_gaussians_jax(pts, w, 2.5, (40, 30), (8, 12), valid=valid)
    junk = gaze.render_gaussians_jax(junk_pts, junk_w, 2.5, (40, 30), (8, 12), valid=valid)
    np.testing.assert_array_equal(np.asarray(clean), np.asarray(junk))
    empty = gaze.render_gaussians_jax(pts, w, 2.5, (40, 30), (8, 12), valid=np.zeros(16, bool))
    assert not np.asarray(empty).any()
    with pytest.raises(ValueError, match="n_max"):
        gaze.pad_points(POINTS_2D, DURATIONS, 4)


def test_transform_equals_rendering_transformed_points():
    scale, offset = np.array([0.5, 1.25]), np.array([4.0, -2.0])
    transform = gaze.AffineTransform(scale, offset)
    got = gaze.render_gaussians(POINTS_2D, DURATIONS, SIGMA_2D, (30, 35), (10, 7), normalize=None,
                                transform=transform)
    want = _quadrature_area(POINTS_2D * scale + offset, DURATIONS, SIGMA_2D * scale, (30, 35), (10, 7))
    assert _rel_err(got, want) < 1e-5


def test_pad_resize_transform_keeps_cells_aligned():
    """Padding by (4, 2) then halving: frame cell o + (2, 1) is original cell o of a 2x area downsample."""
    original = gaze.render_gaussians(POINTS_2D, DURATIONS, SIGMA_2D, (40, 30), (20, 15), normalize=None)
    frame = gaze.render_gaussians(POINTS_2D, DURATIONS, SIGMA_2D, (24, 17), (24, 17), normalize=None,
                                  transform=gaze.pad_resize_transform((4, 2), 0.5))
    np.testing.assert_allclose(frame[2:22, 1:16], 4 * original, rtol=1e-5, atol=1e-9)  # density per new pixel


def test_normalize_map():
    m = np.array([[0.0, 1.0], [2.0, 5.0]])
    np.testing.assert_allclose(gaze.normalize_map(m, "max"), m / 5)
    np.testing.assert_allclose(gaze.normalize_map(m + 1, "minmax"), m / 5)
    np.testing.assert_allclose(gaze.normalize_map(m, "sum"), m / 8)
    np.testing.assert_allclose(gaze.normalize_map(m, None), m)
    for how in ("max", "minmax", "sum", None):
        z = gaze.normalize_map(np.zeros((3, 4)), how)
        assert z.dtype == np.float32 and not z.any() and np.isfinite(z).all()
    assert not gaze.normalize_map(np.full((2, 2), 3.0), "minmax").any()
    with pytest.raises(ValueError, match="normalize"):
        gaze.normalize_map(m, "l2")


@pytest.mark.parametrize("normalize", ["max", "minmax", "sum", None])
def test_empty_points_give_zeros(normalize):
    for points in (np.zeros((0, 3)), []):
        m = gaze.render_gaussians(points, None, 2.0, (8, 8, 8), (4, 4, 4), normalize=normalize)
        assert m.shape == (4, 4, 4) and not m.any() and np.isfinite(m).all()


def test_sum_normalisation_and_amplitudes():
    inside = POINTS_2D[[0, 3, 5]]
    m = gaze.render_gaussians(inside, DURATIONS[[0, 3, 5]], 1.0, (40, 30), (8, 6), normalize=None)
    assert m.sum() * 25 == pytest.approx(DURATIONS[[0, 3, 5]].sum(), rel=1e-4)  # mass kept; cells are 5x5 px
    peak = gaze.render_gaussians(inside, None, 2.0, (40, 30), (40, 30), mode="center", normalize=None,
                                 amplitude="peak")
    assert peak[22, 15] == pytest.approx(math.exp(-0.5 * 0.25 / 4), rel=1e-6)  # 0.5 px off its one fixation
    assert gaze.render_gaussians(inside, None, 2.0, (40, 30), (8, 6), normalize="sum").sum() == pytest.approx(1.0)


def test_ggcam_heatmap():
    points = np.array([[200.0, 150.0], [120.0, 40.0], [300.0, 250.0]])
    psi = gaze.ggcam_heatmap(points, (320, 256), (20, 16), blur=30.0)
    assert psi.max() == pytest.approx(1.0) and psi.min() >= 0
    want = _quadrature_area(points, np.ones(3), 30.0, (320, 256), (20, 16))
    np.testing.assert_allclose(psi, want / want.max(), atol=1e-5)
    # The public code: cv.GaussianBlur(dots, (41, 41), 0) -> sigma 0.3*(20-1)+0.8 = 6.5, 20-px radius; even B -> B+1.
    dots = np.zeros((80, 60))
    np.add.at(dots, ([30, 70], [20, 55]), 1.0)
    kernel = np.exp(-0.5 * (np.arange(-20, 21) / 6.5) ** 2)
    blurred = ndimage.convolve1d(ndimage.convolve1d(dots, kernel / kernel.sum(), 0, mode="constant"),
                                 kernel / kernel.sum(), 1, mode="constant")
    want = blurred.reshape(16, 5, 12, 5).mean(axis=(1, 3))
    got = gaze.ggcam_heatmap([[30, 20], [70, 55]], (80, 60), (16, 12), blur=40, blur_parameter="opencv_ksize")
    assert np.abs(got - want / want.max()).max() < 2e-3


def test_duration_weighted_map_is_gazat_equation():
    points = np.array([[3.0, 4.0], [10.5, 12.0]])
    got = gaze.duration_weighted_map(points, [0.3, 0.9], 2.0, (16, 14), (16, 14), mode="center")
    yy, xx = np.mgrid[0:16, 0:14]
    a = sum(d * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2)) for (y, x), d in zip(points, [0.3, 0.9]))
    np.testing.assert_allclose(got, (a - a.min()) / (a.max() - a.min()), atol=1e-6)


def test_reflacx_sigma():
    sigma = gaze.reflacx_sigma([40.0, 42.0], [38.0, 39.5])
    np.testing.assert_allclose(sigma, [[38.0, 40.0], [39.5, 42.0]])  # (row, col) = (y, x)
    np.testing.assert_allclose(gaze.reflacx_sigma(np.array([40.0]), np.array([38.0]), degrees=0.5), [[19.0, 20.0]])


def test_aggregate_readers():
    maps = np.stack([np.eye(3), 2 * np.ones((3, 3)), np.zeros((3, 3))])
    mean = (np.eye(3) + 2) / 3
    np.testing.assert_allclose(gaze.aggregate_readers(maps), mean / mean.max())
    np.testing.assert_allclose(gaze.aggregate_readers(list(maps), [3.0, 1.0, 0.0], "weighted", normalize=None),
                               (3 * np.eye(3) + 2) / 4)
    with pytest.raises(ValueError, match="weighted"):
        gaze.aggregate_readers(maps, [1.0, -1.0, 1.0], "weighted")


def test_bad_input_gives_one_line_errors():
    cases = [
        dict(points=np.zeros((3, 2)), sigma=1.0, in_shape=(4, 4, 4), out_shape=(2, 2, 2)),  # 2D points, 3D grid
        dict(points=np.zeros((3, 2)), sigma=0.0, in_shape=(4, 4), out_shape=(2, 2)),
        dict(points=np.zeros((3, 2)), sigma=np.ones(4), in_shape=(4, 4), out_shape=(2, 2)),
        dict(points=np.zeros((2, 2)), sigma=np.ones(2), in_shape=(4, 4), out_shape=(2, 2)),  # ambiguous
        dict(points=np.zeros((3, 2)), sigma=1.0, in_shape=(4, 4), out_shape=(2, 2), mode="nearest"),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError, match="gazejax.data.gaze") as err:
            gaze.render_gaussians(weights=None, **kwargs)
        assert "\n" not in str(err.value)
