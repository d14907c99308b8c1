"""gazejax.data.views: gaze attention maps against gazejax.data.gaze's recipes, the gaze-guided view I_g (= I where A = 1,
= T_strong(I) where A = 0), maps that move with the image, random maps, and gaze-free standard views."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.data import gaze
from gazejax.data import transforms2d, views

SIZE = 32
IDENTITY = transforms2d.AugmentConfig(scale=(1.0, 1.0), aspect=(1.0, 1.0), rotation=0.0, brightness=0.0,
                                      contrast=0.0)


def _example(points, readers=None, durations=None, sigma=3.0, pad=2, image=None):
    points = np.asarray(points, np.float32).reshape(-1, 2)
    n = len(points)
    readers = np.zeros(n, np.int32) if readers is None else np.asarray(readers, np.int32)
    durations = np.linspace(0.2, 1.0, n).astype(np.float32) if durations is None else np.asarray(durations,
                                                                                                  np.float32)
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0.2, 0.8, (SIZE, SIZE, 1)).astype(np.float32) if image is None else image,
            "fixations": np.pad(points, ((0, pad), (0, 0))), "fixation_weights": np.pad(durations, (0, pad)),
            "fixation_sigma": np.full((n + pad, 2), sigma, np.float32), "fixation_valid": np.arange(n + pad) < n,
            "fixation_reader": np.pad(readers, (0, pad), constant_values=-1),
            "reader_weights": np.array([1.0, 3.0], np.float32), "has_gaze": np.asarray(n > 0),
            "label": np.asarray(1, np.int32), "label_mask": np.asarray(True)}


POINTS = [[5.0, 6.0], [20.0, 25.0], [12.0, 12.0], [25.0, 4.0]]


def test_single_reader_map_is_gazats_duration_weighted_map():
    ex = _example(POINTS)
    want = gaze.duration_weighted_map(np.array(POINTS), ex["fixation_weights"][:4], 3.0, (SIZE, SIZE), (8, 8))
    np.testing.assert_allclose(views.attention_map(ex, (8, 8), views.AttentionSpec()), want, atol=1e-6)
    count = views.attention_map(ex, (8, 8), views.AttentionSpec(kind="count"))
    np.testing.assert_allclose(count, gaze.duration_weighted_map(np.array(POINTS), np.ones(4), 3.0, (SIZE, SIZE),
                                                                 (8, 8)), atol=1e-6)
    assert not np.allclose(count, want)
    empty = _example(np.zeros((0, 2)))
    assert not views.attention_map(empty, (4, 4), views.AttentionSpec()).any()


def test_multi_reader_aggregation_mean_weighted_pooled_and_max_readers():
    ex = _example(POINTS, readers=[0, 0, 1, 1])
    per = [gaze.duration_weighted_map(np.array(POINTS)[s], ex["fixation_weights"][:4][s], 3.0, (SIZE, SIZE), (8, 8))
           for s in (slice(0, 2), slice(2, 4))]
    mean = gaze.normalize_map((per[0] + per[1]) / 2, "minmax")
    np.testing.assert_allclose(views.attention_map(ex, (8, 8), views.AttentionSpec()), mean, atol=1e-6)
    weighted = gaze.normalize_map((1 * per[0] + 3 * per[1]) / 4, "minmax")  # reader_weights (1, 3)
    np.testing.assert_allclose(views.attention_map(ex, (8, 8), views.AttentionSpec(aggregate="weighted")), weighted,
                               atol=1e-6)
    pooled = gaze.duration_weighted_map(np.array(POINTS), ex["fixation_weights"][:4], 3.0, (SIZE, SIZE), (8, 8))
    np.testing.assert_allclose(views.attention_map(ex, (8, 8), views.AttentionSpec(aggregate="pooled")), pooled,
                               atol=1e-6)
    np.testing.assert_allclose(views.attention_map(ex, (8, 8), views.AttentionSpec(max_readers=1)), per[0],
                               atol=1e-6)
    with pytest.raises(ValueError, match="aggregate"):
        views.AttentionSpec(aggregate="median")


def test_gaze_guided_view_blends_image_and_strong_augmentation():
    rng = np.random.default_rng(3)
    image, strong = rng.uniform(size=(6, 6, 1)), rng.uniform(size=(6, 6, 1))
    a = rng.uniform(size=(6, 6))
    a[:2], a[-2:] = 1.0, 0.0
    out = views.gaze_guided(image, a, strong)
    np.testing.assert_array_equal(out[:2], image[:2].astype(np.float32))
    np.testing.assert_array_equal(out[-2:], strong[-2:].astype(np.float32))
    np.testing.assert_allclose(out, a[..., None] * image + (1 - a[..., None]) * strong, rtol=1e-6)


def test_make_views_keeps_attended_pixels_and_strongly_augments_the_rest():
    cfg = views.ViewConfig(standard=IDENTITY, gaze_view_geometric=False, grids={"layer": (4, 4)},
                           strong=views.StrongAugment(jitter_prob=1.0, blur_prob=1.0, noise_prob=1.0,
                                                      cutout_prob=1.0))
    with_gaze, without = _example([[8.0, 8.0]], sigma=4.0), _example(np.zeros((0, 2)))
    v1 = views.make_views(with_gaze, np.random.default_rng(7), cfg)
    v0 = views.make_views(without, np.random.default_rng(7), cfg)  # same draws, A = 0 everywhere: T_strong(I)
    image, strong = with_gaze["image"], v0["view_g"]
    assert not np.allclose(strong, image, atol=1e-2)
    a = views.attention_map(with_gaze, (SIZE, SIZE), views.AttentionSpec())
    np.testing.assert_allclose(v1["view_g"], a[..., None] * image + (1 - a[..., None]) * strong, atol=1e-6)
    top = a == 1.0
    assert top.sum() >= 1
    np.testing.assert_allclose(v1["view_g"][top], image[top], atol=1e-6)
    far = a == 0.0  # min-max normalisation: the least attended cell is exactly 0
    assert far.sum() >= 1
    np.testing.assert_allclose(v1["view_g"][far], strong[far], atol=1e-6)
    np.testing.assert_allclose(v1["view_a"], image, atol=1e-6)  # identity standard augmentation
    assert v1["attn_a_layer"].shape == v1["attn_g_layer"].shape == (4, 4)


def test_attention_targets_move_with_the_augmented_image():
    image = np.zeros((SIZE, SIZE, 1), np.float32)
    image[9:12, 21:24] = 1.0  # a bright finding, fixated at its centre
    ex = _example([[10.0, 22.0]], sigma=1.5, image=image)
    cfg = views.ViewConfig(standard=transforms2d.AugmentConfig(scale=(0.6, 0.7), rotation=10.0, brightness=0.0,
                                                               contrast=0.0), grids={"full": (SIZE, SIZE)})
    peaks = set()
    for seed in range(4):
        v = views.make_views(ex, np.random.default_rng(seed), cfg)
        a = v["attn_a_full"]
        peak_image = np.unravel_index(np.argmax(v["view_a"][..., 0]), a.shape)
        peak_map = np.unravel_index(np.argmax(a), a.shape)
        assert np.abs(np.subtract(peak_image, peak_map)).max() <= 2, (seed, peak_image, peak_map)
        peaks.add(tuple(int(p) for p in peak_map))
    assert len(peaks) > 1  # the crops really moved the finding


def test_random_maps_move_fixations_reproducibly():
    ex = _example(POINTS)
    r1, r2 = views.randomize_fixations(ex), views.randomize_fixations(ex)
    np.testing.assert_array_equal(r1["fixations"], r2["fixations"])
    assert not np.allclose(r1["fixations"][:4], ex["fixations"][:4])
    np.testing.assert_array_equal(r1["fixations"][4:], ex["fixations"][4:])  # padding untouched
    for key in ("fixation_weights", "fixation_sigma", "fixation_reader"):
        np.testing.assert_array_equal(r1[key], ex[key])
    assert (r1["fixations"][:4] >= -0.5).all() and (r1["fixations"][:4] <= SIZE - 0.5).all()
    cfg = views.ViewConfig(attention=views.AttentionSpec(random=True), grids={"l": (8, 8)})
    real = views.make_views(ex, np.random.default_rng(0), views.ViewConfig(grids={"l": (8, 8)}))
    rand = views.make_views(ex, np.random.default_rng(0), cfg)
    assert not np.allclose(real["attn_a_l"], rand["attn_a_l"])


def test_standard_views_use_no_gaze_and_strong_augment_is_bounded():
    cfg = views.ViewConfig(mode="standard")
    a = views.make_views(_example(POINTS), np.random.default_rng(5), cfg)
    b = views.make_views(_example([[1.0, 1.0]], readers=[1]), np.random.default_rng(5), cfg)
    assert set(a) == {"view_a", "view_g", "has_gaze", "label", "label_mask"}
    for key in ("view_a", "view_g"):
        np.testing.assert_array_equal(a[key], b[key])
    img = _example(POINTS)["image"]
    out = views.strong_augment(img, np.random.default_rng(1), views.StrongAugment(jitter_prob=1, blur_prob=1,
                                                                                  noise_prob=1, cutout_prob=1))
    assert out.dtype == np.float32 and out.shape == img.shape and 0.0 <= out.min() and out.max() <= 1.0
    off = views.StrongAugment(jitter_prob=0, blur_prob=0, noise_prob=0, cutout_prob=0)
    np.testing.assert_array_equal(views.strong_augment(img, np.random.default_rng(1), off), img)
    with pytest.raises(ValueError, match="unknown strong augmentation"):
        views.StrongAugment.from_dict({"sharpen": 1})
    ft = views.finetune_view(_example(POINTS), np.random.default_rng(0), transforms2d.AugmentConfig())
    assert set(ft) == {"image", "label", "label_mask"} and ft["image"].shape == (SIZE, SIZE, 1)
