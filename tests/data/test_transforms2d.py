"""2D augmentation: identity, analytic warps (rot90, flips, crop of a linear ramp), points/dots/masks moving together
at two grid resolutions, intensity jitter on the image only, flips off by default."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.data import gaze
from gazejax.data import transforms2d as t2d

H, W = 48, 40
NO_JITTER = dict(scale=(1.0, 1.0), aspect=(1.0, 1.0), rotation=0.0, brightness=0.0, contrast=0.0)


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_identity_parameters_give_identity():
    p = t2d.AffineParams.identity((H, W))
    m, t = p.matrix()
    np.testing.assert_allclose(m, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(t, 0.0, atol=1e-12)
    img = _rng().random((H, W, 2)).astype(np.float32)
    coarse = _rng(1).random((H // 4, W // 4)).astype(np.float32)
    mask = _rng(2).random((H, W)) > 0.5
    np.testing.assert_array_equal(t2d.warp(img, p), img)
    np.testing.assert_array_equal(t2d.warp(coarse, p), coarse)
    np.testing.assert_array_equal(t2d.warp(mask, p, order=0), mask)
    pts = _rng(3).uniform(0, 30, (5, 2))
    np.testing.assert_allclose(t2d.map_points(pts, p), pts, atol=1e-5)
    np.testing.assert_allclose(t2d.map_points(pts, p, grid_shape=(12, 10)), pts, atol=1e-5)
    np.testing.assert_allclose(t2d.map_sigma(np.full((5, 2), 3.0), p), 3.0, atol=1e-6)
    # sampling with all ranges collapsed is the identity too, intensity included
    out = t2d.augment(img[..., 0], _rng(), t2d.AugmentConfig(**NO_JITTER), maps={"g": coarse}, points=pts)
    np.testing.assert_allclose(out.image, img[..., 0], atol=1e-6)
    np.testing.assert_allclose(out.maps["g"], coarse, atol=1e-6)
    np.testing.assert_allclose(out.points, pts, atol=1e-4)


def test_rot90_and_flips_match_numpy():
    img = _rng().random((16, 16)).astype(np.float32)
    rot = t2d.AffineParams((16, 16), (7.5, 7.5), (16.0, 16.0), angle=90.0)
    np.testing.assert_allclose(t2d.warp(img, rot), np.rot90(img), atol=1e-5)  # counter-clockwise on screen
    ud = t2d.AffineParams((16, 16), (7.5, 7.5), (16.0, 16.0), flip_ud=True)
    lr = t2d.AffineParams((16, 16), (7.5, 7.5), (16.0, 16.0), flip_lr=True)
    np.testing.assert_allclose(t2d.warp(img, ud), img[::-1], atol=1e-6)
    np.testing.assert_allclose(t2d.warp(img, lr), img[:, ::-1], atol=1e-6)
    # the point (row 2, col 12) lands where np.rot90 puts that pixel: (15 - 12, 2)
    np.testing.assert_allclose(t2d.map_points([[2.0, 12.0]], rot), [[3.0, 2.0]], atol=1e-5)


def test_crop_of_a_linear_ramp_is_exact():
    """Crop box (top-left quarter) resized to the full frame: bilinear reproduces a linear ramp exactly, and output
    pixel o samples input 1.5 + 0.5 * (o - 3.5) (edges -0.5 -> -0.5, 7.5 -> 3.5)."""
    r, c = np.mgrid[0:8, 0:8].astype(np.float64)
    ramp = (r + 2 * c).astype(np.float32)
    p = t2d.AffineParams((8, 8), (1.5, 1.5), (4.0, 4.0))
    out = t2d.warp(ramp, p)
    src = 1.5 + 0.5 * (np.arange(8) - 3.5)
    expected = src[:, None] + 2 * src[None, :]
    inside = (src >= 0) & (src <= 7)
    np.testing.assert_allclose(out[np.ix_(inside, inside)], expected[np.ix_(inside, inside)], atol=1e-5)
    np.testing.assert_allclose(t2d.map_points([[1.5, 3.5]], p), [[3.5, 7.5]], atol=1e-5)
    np.testing.assert_allclose(t2d.map_sigma([[1.0, 2.0]], p), [[2.0, 4.0]], atol=1e-5)  # zoom 2


@pytest.mark.parametrize("seed", range(6))
def test_point_dot_and_mask_stay_together(seed):
    rng = _rng(seed)
    cfg = t2d.AugmentConfig(flip_lr=0.5, flip_ud=0.5)
    params = t2d.sample_affine(rng, (H, W), cfg)
    for grid in [(H, W), (H // 4, W // 4)]:  # image resolution and a 4x coarser gaze grid
        h, w = grid
        for _ in range(4):
            cell = rng.integers([h // 4, w // 4], [3 * h // 4, 3 * w // 4])
            moved = t2d.map_points(cell[None].astype(float), params, grid_shape=grid)[0]
            if not ((moved >= 1) & (moved <= np.array(grid) - 2)).all():
                continue
            dot = np.zeros(grid, np.float32)
            dot[tuple(cell)] = 1.0
            peak = np.unravel_index(np.argmax(t2d.warp(dot, params)), grid)
            assert np.abs(np.array(peak) - moved).max() <= 1.0, (grid, cell, moved, peak)
            block = np.zeros(grid, np.uint8)
            block[cell[0] - 1:cell[0] + 2, cell[1] - 1:cell[1] + 2] = 1
            warped = t2d.warp(block, params, order=0)
            assert warped.dtype == np.uint8 and warped.sum() > 0
            centroid = np.argwhere(warped).mean(axis=0)
            assert np.abs(centroid - moved).max() <= 1.0, (grid, centroid, moved)


def test_rendered_gaze_after_transform_matches_warped_map():
    """Re-rendering from moved points (exact) agrees with warping the rendered map (interpolated)."""
    rng = _rng(5)
    pts = rng.uniform([10, 10], [H - 10, W - 10], (6, 2))
    sigma = np.full((6, 2), 3.0)
    grid = (H // 2, W // 2)
    before = gaze.render_gaussians(pts, None, sigma, (H, W), grid, normalize=None)
    params = t2d.sample_affine(rng, (H, W), t2d.AugmentConfig(aspect=(1.0, 1.0)))
    warped = t2d.warp(before, params)
    moved = gaze.render_gaussians(t2d.map_points(pts, params), None, t2d.map_sigma(sigma, params), (H, W), grid,
                                  normalize=None)
    # same up to interpolation (the maps' mass density per pixel scales with the zoom; compare shapes)
    assert np.corrcoef(warped.ravel(), moved.ravel())[0, 1] > 0.98


def test_intensity_changes_the_image_only():
    rng = _rng(7)
    img = rng.random((H, W)).astype(np.float32)
    gmap = rng.random((H // 4, W // 4)).astype(np.float32)
    mask = (rng.random((H, W)) > 0.5).astype(np.uint8)
    out = t2d.augment(img, rng, t2d.AugmentConfig(), maps={"g": gmap}, masks={"m": mask})
    np.testing.assert_array_equal(out.maps["g"], t2d.warp(gmap, out.affine))
    np.testing.assert_array_equal(out.masks["m"], t2d.warp(mask, out.affine, order=0))
    b, c = out.intensity.brightness, out.intensity.contrast
    assert 0.8 <= b <= 1.2 and 0.8 <= c <= 1.2 and (b, c) != (1.0, 1.0)
    geo = t2d.warp(img, out.affine)
    bright = np.minimum(geo.astype(np.float64) * b, 1.0)  # torchvision: blend with black, clamp
    expected = np.clip((bright - bright.mean()) * c + bright.mean(), 0, 1)  # blend with the mean, clamp
    np.testing.assert_allclose(out.image, expected, atol=1e-6)
    # with geometry collapsed, maps and masks come back untouched while the image changes
    cfg = t2d.AugmentConfig(**{**NO_JITTER, "brightness": 0.2, "contrast": 0.2})
    out = t2d.augment(img, _rng(8), cfg, maps={"g": gmap}, masks={"m": mask})
    np.testing.assert_allclose(out.maps["g"], gmap, atol=1e-6)
    np.testing.assert_array_equal(out.masks["m"], mask)
    assert np.abs(out.image - img).max() > 1e-3


def test_flips_off_by_default_and_ranges_respected():
    cfg = t2d.AugmentConfig()
    assert cfg.flip_lr == 0 and cfg.flip_ud == 0
    rng = _rng(9)
    params = [t2d.sample_affine(rng, (H, W), cfg) for _ in range(200)]
    assert not any(p.flip_lr or p.flip_ud for p in params)
    for p in params:
        area = p.size[0] * p.size[1] / (H * W)
        aspect = (p.size[1] / W) / (p.size[0] / H)
        assert 0.8 - 1e-9 <= area <= 1.0 + 1e-9 and 3 / 4 - 1e-9 <= aspect <= 4 / 3 + 1e-9
        assert abs(p.angle) <= 10.0
        for c, s, n in zip(p.center, p.size, (H, W)):  # the crop lies inside the image
            assert c - s / 2 >= -0.5 - 1e-9 and c + s / 2 <= n - 0.5 + 1e-9
    flipped = [t2d.sample_affine(rng, (H, W), t2d.AugmentConfig(flip_lr=1.0)) for _ in range(5)]
    assert all(p.flip_lr and not p.flip_ud for p in flipped)


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown augmentation options"):
        t2d.AugmentConfig.from_dict({"rotate": 5})
    with pytest.raises(ValueError, match="scale"):
        t2d.AugmentConfig(scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        t2d.warp(np.zeros((2, 3, 4, 5)), t2d.AffineParams.identity((2, 3)))
    assert t2d.AugmentConfig.from_dict({"scale": [0.9, 1.0]}).scale == (0.9, 1.0)
