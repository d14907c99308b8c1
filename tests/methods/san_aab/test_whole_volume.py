"""Whole-volume training (`data.whole_volume`): every training example is its case's whole brain box, zero-padded to
one shape (the largest box rounded up to 16, or to the least common multiple with `mesh.spatial`; X = Y), never
cropped: the example holds every non-zero voxel of the cached box, and its targets and gaze grid follow the shape."""
from __future__ import annotations

import types

import numpy as np
import pytest

from gazejax.data.brats import pipeline
from tests.conftest import tiny_brats_config


def _records(*extents):
    return [types.SimpleNamespace(bbox=tuple((5, 5 + n) for n in e)) for e in extents]


def test_the_shape_holds_the_largest_box_in_multiples_of_16_with_equal_in_plane_sides():
    assert pipeline.whole_volume_shape(_records((130, 170, 140), (150, 160, 155))) == (176, 176, 160)
    assert pipeline.whole_volume_shape(_records((32, 16, 16))) == (32, 32, 16)
    assert pipeline.whole_volume_shape(_records((33, 16, 16)), multiple=48) == (48, 48, 48)
    with pytest.raises(ValueError, match="data.whole_volume: no training cases"):
        pipeline.whole_volume_shape([])


def test_whole_volume_examples_hold_the_whole_brain_box(tiny_brats_root, tmp_path):
    from gazejax.methods.san_aab import spec

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), **{"data.whole_volume": True,
                                                                         "data.augment_p": 0.0})
    data = spec.make_data(cfg)
    records = [data.train[i] for i in range(len(data.train))]
    extent = np.max([[b - a for a, b in r.bbox] for r in records], axis=0)
    shape = tuple(data.info["train_shape"])
    assert all(s % 16 == 0 and s >= n for s, n in zip(shape, extent)) and shape[0] == shape[1]
    assert all(s - n < 16 for s, n in zip(shape[2:], extent[2:]))
    rng = np.random.default_rng(0)
    for record in records[:3]:
        example = data.augment(record, rng)
        image = np.asarray(record.image())
        assert example["image"].shape == (*shape, 4) and example["target"].shape == (*shape, 3)
        assert example["gaze"].shape == (*(s // 16 for s in shape), 1)
        # padding adds zeros only: every voxel of the box is there (same count and sum of non-zeros)
        assert np.count_nonzero(example["image"]) == np.count_nonzero(image)
        np.testing.assert_allclose(example["image"].sum(), image.sum(), rtol=1e-5)


def test_crops_stay_the_default(tiny_brats_root, tmp_path):
    from gazejax.methods.san_aab import spec

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"))
    assert cfg.data.whole_volume is False
    data = spec.make_data(cfg)
    assert "train_shape" not in data.info
    example = data.augment(data.train[0], np.random.default_rng(0))
    assert example["image"].shape == (*cfg.data.crop_size, 4)
