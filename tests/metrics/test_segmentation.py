"""Tests of gazejax.metrics.segmentation against hand-computed volumes and a brute-force HD95."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from gazejax.metrics import segmentation as seg


def _cube(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def _brute_force_hd95(pred, gt, spacing):
    """Independent HD95: surface = mask voxels with a 6-neighbour outside the mask (or the volume); all-pairs."""
    def surface_points(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)
    p, g = surface_points(pred), surface_points(gt)
    d = cdist(p, g)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def test_dice_hand_values_and_empty_conventions():
    pred = np.zeros((2, 2, 2), bool)
    gt = np.zeros((2, 2, 2), bool)
    pred[0] = True  # 4 voxels
    gt[0, 0] = True
    gt[1] = True  # 2 + 4 = 6 voxels, overlap 2
    assert seg.dice(pred, gt) == pytest.approx(2 * 2 / (4 + 6))
    assert seg.dice(pred, pred) == 1.0
    empty = np.zeros((2, 2, 2), bool)
    assert seg.dice(empty, empty) == 1.0
    assert seg.dice(pred, empty) == 0.0 and seg.dice(empty, gt) == 0.0
    assert isinstance(seg.dice(pred, gt), float)


def test_hd95_empty_conventions():
    shape = (240, 240, 155)
    empty = np.zeros(shape, bool)
    one = empty.copy()
    one[100, 100, 70] = True
    assert seg.hd95(empty, empty) == 0.0
    assert seg.hd95(one, empty) == pytest.approx(373.13, abs=5e-3)  # sqrt(240^2 + 240^2 + 155^2)
    assert seg.hd95(empty, one) == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2))
    small = np.zeros((4, 5, 6), bool)
    small_one = small.copy()
    small_one[0, 0, 0] = True
    assert seg.hd95(small_one, small, spacing=(2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(8**2 + 5**2 + 3**2))


def test_hd95_cubes_shifted_by_three_voxels_anisotropic():
    # 3x3x3 cubes: the surface is all but the centre voxel; the three x-layers of one cube are 1, 2 and 3 voxels
    # from the other cube's facing layer (18 + 16 + 18 distances), so the 95th percentile is the 3-voxel step.
    spacing = (2.0, 1.0, 0.5)
    a = _cube((16, 16, 16), (5, 5, 5), 3)
    b_x = _cube((16, 16, 16), (8, 5, 5), 3)
    b_z = _cube((16, 16, 16), (5, 5, 8), 3)
    assert seg.hd95(a, b_x, spacing) == pytest.approx(3 * 2.0)
    assert seg.hd95(a, b_z, spacing) == pytest.approx(3 * 0.5)
    assert seg.hd95(a, a, spacing) == 0.0


def test_hd95_percentile_interpolation_by_hand():
    # pred has voxels at z=2 and z=9, gt only at z=2: pooled distances [0, 0, 7 * sz];
    # numpy's linear 95th percentile sits at index 1.9 -> 0 + 0.9 * 7 * sz.
    pred = np.zeros((5, 5, 12), bool)
    gt = pred.copy()
    pred[2, 2, 2] = pred[2, 2, 9] = True
    gt[2, 2, 2] = True
    assert seg.hd95(pred, gt, spacing=(1.0, 1.0, 0.5)) == pytest.approx(0.9 * 7 * 0.5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.2, 0.7, 2.5)])
def test_hd95_matches_brute_force_and_crop_is_exact(spacing):
    rng = np.random.default_rng(0)
    for trial in range(5):
        shape = (18, 15, 12)
        pred = _cube(shape, rng.integers(0, 8, 3), 5) | _cube(shape, rng.integers(0, 8, 3), 4)
        gt = _cube(shape, rng.integers(0, 8, 3), 6)
        if trial == 2:  # ragged masks, whose 6- and 26-neighbour erosions differ (cubes' do not)
            pred &= rng.random(shape) > 0.3
            gt |= _cube(shape, (2, 2, 2), 8) & (rng.random(shape) > 0.5)
        if trial == 3:  # masks touching the volume border: erosion must treat the outside as background
            pred[0, :, :4] = True
            gt[-1, -3:, :] = True
        full = seg.hd95(pred, gt, spacing, crop=False)
        assert seg.hd95(pred, gt, spacing) == full  # identical, not approximately equal
        assert full == pytest.approx(_brute_force_hd95(pred, gt, spacing), rel=1e-12)


@pytest.mark.slow
def test_hd95_crop_exact_on_brats_sized_volume():
    shape = (240, 240, 155)
    rng = np.random.default_rng(1)
    gt = np.zeros(shape, bool)
    gt[100:130, 90:125, 60:80] = rng.random((30, 35, 20)) > 0.3
    pred = np.zeros(shape, bool)
    pred[104:128, 95:120, 58:84] = rng.random((24, 25, 26)) > 0.4
    spacing = (1.0, 1.0, 1.5)
    assert seg.hd95(pred, gt, spacing) == seg.hd95(pred, gt, spacing, crop=False)


def test_hd95_rejects_bad_input():
    a = np.zeros((3, 3, 3), bool)
    with pytest.raises(ValueError, match="shape"):
        seg.hd95(a, np.zeros((3, 3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        seg.hd95(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="threshold"):
        seg.dice(a.astype(np.float32), a)


def test_brats_regions_and_onehot_channel_order():
    labels = np.array([0, 1, 2, 4], dtype=np.uint8)
    regions = seg.brats_regions(labels)
    assert regions["ET"].tolist() == [False, False, False, True]
    assert regions["TC"].tolist() == [False, True, False, True]
    assert regions["WT"].tolist() == [False, True, True, True]
    onehot = seg.labels_to_regions_onehot(labels)
    assert onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot, [[0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"\[3\]"):
        seg.brats_regions(np.array([0, 3, 4]))


def test_region_label_round_trip():
    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(9, 8, 7))
    onehot = seg.labels_to_regions_onehot(labels) > 0.5
    back = seg.labels_from_regions(onehot[..., 0], onehot[..., 1], onehot[..., 2])
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    # Inconsistent channels: ET wins over TC/WT, TC over WT.
    t, f = np.array([True]), np.array([False])
    assert seg.labels_from_regions(t, f, f).tolist() == [4]
    assert seg.labels_from_regions(f, t, f).tolist() == [1]


def test_brats_scores_keys_and_values():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 2
    gt[3:5, 3:5, 3:5] = 1  # TC = 8 voxels, WT = 64 voxels, no ET
    pred = gt.copy()
    pred[3, 3, 3] = 4  # predicts one ET voxel where there is none
    scores = seg.brats_scores(pred, gt, spacing=(1.0, 1.0, 2.0))
    assert set(scores) == {f"{m}_{r}" for m in ("dice", "hd95") for r in ("ET", "TC", "WT")}
    assert scores["dice_ET"] == 0.0 and scores["hd95_ET"] == pytest.approx(math.sqrt(10**2 + 10**2 + 20**2))
    assert scores["dice_TC"] == 1.0 and scores["hd95_TC"] == 0.0
    assert scores["dice_WT"] == 1.0 and scores["hd95_WT"] == 0.0
    assert all(isinstance(v, float) for v in scores.values())
