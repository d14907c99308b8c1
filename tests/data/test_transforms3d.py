"""3D preprocessing/augmentation: hand-computed crops and percentiles, and gaze points that follow every spatial
transform exactly (a one-hot volume rendered at the point is transformed and its argmax compared)."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.data import transforms3d as t3d


def _one_hot(shape, point) -> np.ndarray:
    volume = np.zeros(shape, np.uint8)
    volume[tuple(point)] = 1
    return volume


def _argmax(volume) -> np.ndarray:
    return np.array(np.unravel_index(np.argmax(volume), volume.shape))


def test_crop_to_nonzero():
    image = np.zeros((10, 12, 8, 3), np.float32)
    image[3:7, 2:9, 5, 2] = 1.0
    image[4, 3, 5, 0] = -2.0  # negative values count as non-zero
    seg = np.zeros((10, 12, 8), np.uint8)
    seg[4, 5, 5] = 4
    cropped, seg_c, bbox = t3d.crop_to_nonzero(image, seg)
    assert bbox == ((3, 7), (2, 9), (5, 6))
    assert cropped.shape == (4, 7, 1, 3) and seg_c.shape == (4, 7, 1)
    np.testing.assert_array_equal(_argmax(seg_c), np.array([4, 5, 5]) - [3, 2, 5])
    whole, none, box = t3d.crop_to_nonzero(np.zeros((4, 5, 6, 1)), None)
    assert whole.shape == (4, 5, 6, 1) and none is None and box == ((0, 4), (0, 5), (0, 6))


def test_normalize_intensity_hand_computed():
    image = np.zeros((10, 10, 2, 2), np.float32)
    image[..., 0, 0] = np.arange(1, 101).reshape(10, 10)  # brain = 1..100, background slice z=1 stays 0
    image[..., 0, 1] = 7.0  # constant channel
    out = t3d.normalize_intensity(image)
    low, high = 1.99, 99.01  # linear-interpolation percentiles of 1..100: 1 + 0.99 * 1, 1 + 99 * 0.99
    expected = (np.clip(np.arange(1, 101), low, high) - low) / (high - low)
    np.testing.assert_allclose(out[..., 0, 0].ravel(), expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and out[..., 1, :].max() == 0.0
    assert out[..., 0, 0].min() == 0.0 and out[..., 0, 0].max() == 1.0
    np.testing.assert_array_equal(out[..., 1], 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_random_pad_crop_moves_points(seed):
    rng = np.random.default_rng(seed)
    shape, size = (10, 20, 15), (16, 16, 15)  # pad x, crop y, keep z
    point = np.array([rng.integers(0, 10), rng.integers(0, 20), rng.integers(0, 15)])
    image = rng.random(shape + (2,)).astype(np.float32) + 1.0
    (img_out, seg_out, none), offset = t3d.random_pad_crop([image, _one_hot(shape, point), None], size, rng)
    assert img_out.shape == size + (2,) and seg_out.shape == size and none is None
    assert -6 <= offset[0] <= 0 and 0 <= offset[1] <= 4 and offset[2] == 0
    new = point - offset
    if np.all((new >= 0) & (new < size)):
        np.testing.assert_array_equal(_argmax(seg_out), new)
    else:
        assert seg_out.sum() == 0
    # Every output voxel is the input voxel at old = new + offset, or a zero pad.
    grid = np.stack(np.meshgrid(*map(np.arange, size), indexing="ij"), -1) + offset
    inside = np.all((grid >= 0) & (grid < shape), axis=-1)
    np.testing.assert_array_equal(img_out[inside], image[tuple(grid[inside].T)])
    assert np.all(img_out[~inside] == 0) and (~inside).any()


def test_center_pad_crop_and_pad_to_multiple():
    volume = np.arange(10 * 20 * 15, dtype=np.float32).reshape(10, 20, 15)
    (out,), offset = t3d.center_pad_crop([volume], (16, 16, 15))
    np.testing.assert_array_equal(offset, [-3, 2, 0])
    np.testing.assert_array_equal(out[3:13], volume[:, 2:18])
    assert np.all(out[:3] == 0) and np.all(out[13:] == 0)
    padded, pads = t3d.pad_to_multiple(volume[..., None], 8)
    assert padded.shape == (16, 24, 16, 1) and pads == ((0, 6), (0, 4), (0, 1))
    np.testing.assert_array_equal(t3d.unpad(padded, pads)[..., 0], volume)


@pytest.mark.parametrize("seed", range(12))
def test_augment_points_follow_seg(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 9, 6)  # only axes 0 and 1 may swap, so the shape is kept
    points = np.stack([rng.integers(0, s, 3) for s in shape], axis=1).astype(np.float64)
    image = rng.random(shape + (2,)).astype(np.float32) + 0.5
    for point in points:
        seg = _one_hot(shape, point.astype(int))
        img_out, seg_out, pts_out = t3d.augment(image, seg, points, np.random.default_rng(seed), p=1.0)
        assert img_out.shape == image.shape and seg_out.shape == shape
        row = int(np.flatnonzero(np.all(points == point, axis=1))[0])
        np.testing.assert_array_equal(_argmax(seg_out), pts_out[row])


def test_augment_changes_geometry_for_some_seeds_and_p0_is_identity():
    shape = (8, 8, 8)
    point = np.array([[1.0, 2.0, 3.0]])
    seg = _one_hot(shape, (1, 2, 3))
    image = np.random.default_rng(0).random(shape + (1,)).astype(np.float32)
    moved = set()
    for seed in range(20):
        _, seg_out, pts = t3d.augment(image, seg, point, np.random.default_rng(seed), p=1.0)
        np.testing.assert_array_equal(_argmax(seg_out), pts[0])
        moved.add(tuple(pts[0]))
    assert len(moved) >= 6  # transposes and flips do happen
    img0, seg0, pts0 = t3d.augment(image, seg, point, np.random.default_rng(1), p=0.0)
    np.testing.assert_array_equal(img0, image)
    np.testing.assert_array_equal(seg0, seg)
    np.testing.assert_array_equal(pts0, point)


def test_augment_intensity_scale_and_noise():
    """Brain values alternate 1 and 3 (std 1); seg marks the 3s so spatial moves can be followed. After scale s and
    noise 0.1 x std(brain after scaling) = 0.1 s, the 1s have mean s and std 0.1 s; the 3s mean 3 s."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    high = (np.indices(shape).sum(0) % 2).astype(np.uint8)
    image = np.where(high, 3.0, 1.0).astype(np.float32)[..., None]
    image = np.concatenate([image, 2 * image], axis=-1)
    out, seg, _ = t3d.augment(image, high, None, rng, p=1.0)
    for c, base in enumerate((1.0, 2.0)):
        low_vals, high_vals = out[..., c][seg == 0], out[..., c][seg == 1]
        scale = low_vals.mean() / base
        assert 0.9 <= scale <= 1.1
        np.testing.assert_allclose(high_vals.mean(), 3 * base * scale, rtol=0.01)
        np.testing.assert_allclose(low_vals.std(), 0.1 * base * scale, rtol=0.06)
    scales = out[..., 1][seg == 0].mean() / 2.0, out[..., 0][seg == 0].mean()
    assert abs(scales[0] - scales[1]) > 1e-3  # per-channel scale factors
