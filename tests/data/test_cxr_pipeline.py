"""CXR pipeline on small synthetic EGD-CXR / REFLACX sets: cache, examples (shapes, dtypes, gaze = the gaze module's
maps of the original fixations), augmentation keeping gaze/masks with the image, splits, the DataBundle."""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import pydicom
import pytest

from gazejax.data import gaze
from gazejax.data.cxr import pipeline as cp
from gazejax.data.cxr import records as cxr_records
from gazejax.engine.api import DataBundle
from gazejax.data import dicom, transforms2d
from gazejax.data.cxr import egd_cxr
from gazejax.data.errors import DataError
from gazejax.data.geometry import ResizeTransform
from gazejax.data.synthetic import cxr as synth

SRC = (128, 104)  # synthetic DICOM size
SIZE = (64, 64)  # resized frame: 128x104 is padded to 128x128 first
GRIDS = {"cam": (8, 8), "full": SIZE}


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr")
    root, mimic = synth.generate_egd_cxr(str(out / "data"), images=30, seed=2, size=SRC)
    cache = str(out / "cache")
    return root, mimic, cache, cxr_records.prepare_records("egd_cxr", root, mimic, cache, SIZE)


@pytest.fixture(scope="module")
def refl(tmp_path_factory):
    out = tmp_path_factory.mktemp("reflacx")
    root, mimic = synth.generate_reflacx(str(out / "data"), images=30, seed=2, size=SRC)
    return cxr_records.prepare_records("reflacx", root, mimic, str(out / "cache"), SIZE, label_set="5label")


def test_prepare_matches_readers_and_geometry(egd):
    root, mimic, _, records = egd
    reader = egd_cxr.EGDCXR(root, mimic)
    assert [r.dicom_id for r in records] == [r.dicom_id for r in reader.records()]
    src, rec = reader.records()[3], records[3]
    tf = ResizeTransform.fit(SRC, SIZE)
    assert rec.image_shape == SIZE and rec.source_shape == SRC and rec.image().dtype == np.float32
    np.testing.assert_allclose(rec.image(), tf.apply(dicom.read(src.image_path)), atol=1e-6)
    np.testing.assert_allclose(rec.points_yx, tf.map_points(src.fixations.points)[:, ::-1], atol=1e-4)
    np.testing.assert_allclose(rec.durations, src.fixations.durations)
    masks = rec.masks()
    assert masks.shape == SIZE + (4,) and masks.dtype == bool and rec.has_masks.all()
    np.testing.assert_array_equal(masks[..., 0], tf.map_mask(reader.load_mask(src, "left_lung")))
    assert rec.sigma_yx is None and rec.label.dtype == np.int32
    truth = synth.read_truth(root)
    assert all(egd_cxr.CLASS_COLUMNS[int(r.label)] == truth[r.dicom_id]["class"] for r in records)


def test_examples_shapes_and_gaze_of_the_original_fixations(egd):
    root, mimic, _, records = egd
    rec = records[5]
    src = egd_cxr.EGDCXR(root, mimic).records()[5]
    tf = ResizeTransform.fit(SRC, SIZE)
    ex = cp.make_example(rec, GRIDS, "gaussian", sigma_px=12.0)
    n = len(rec.points_yx)
    shapes = {"image": (SIZE + (1,), np.float32), "gaze_cam": ((8, 8, 1), np.float32),
              "gaze_full": (SIZE + (1,), np.float32), "has_gaze": ((), np.bool_), "label": ((), np.int32),
              "label_mask": ((), np.bool_), "fixations": ((n, 2), np.float32), "fixation_valid": ((n,), np.bool_),
              "organ_masks": (SIZE + (4,), np.uint8), "has_organ_masks": ((4,), np.bool_)}
    for key, (shape, dtype) in shapes.items():
        assert ex[key].shape == shape and ex[key].dtype == dtype, key
    assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0 and bool(ex["has_gaze"])
    # independent path: the gaze module renders the ORIGINAL fixations through the resize transform
    ref = dict(transform=gaze.AffineTransform(*tf.as_affine("yx")))
    pts, dur = src.fixations.points_yx, src.fixations.durations
    np.testing.assert_allclose(ex["gaze_cam"][..., 0], gaze.render_gaussians(pts, dur, 12.0, SIZE, (8, 8), **ref),
                               atol=1e-5)
    ggcam = cp.make_example(rec, GRIDS, "ggcam", sigma_px=12.0)["gaze_cam"][..., 0]
    np.testing.assert_allclose(ggcam, gaze.ggcam_heatmap(pts, SIZE, (8, 8), 12.0, weights=dur, **ref), atol=1e-5)
    dwm = cp.make_example(rec, GRIDS, "duration", sigma_px=12.0)["gaze_full"][..., 0]
    np.testing.assert_allclose(dwm, gaze.duration_weighted_map(pts, dur, 12.0, SIZE, SIZE, **ref), atol=1e-5)
    # the peak lies on the fixations: within a few pixels of the nearest one
    peak = np.unravel_index(np.argmax(ex["gaze_full"][..., 0]), SIZE)
    assert np.min(np.linalg.norm(rec.points_yx - np.array(peak), axis=1)) < 3.0


def test_reflacx_examples_multilabel_and_dataset_sigma(refl):
    rec = next(r for r in refl if r.has_gaze)
    assert rec.sigma_yx is not None and rec.label.shape == (5,) and rec.label_mask.dtype == bool
    ex = cp.make_example(rec, GRIDS, "gaussian", sigma_px="dataset", max_fixations=len(rec.points_yx) + 7,
                         gaze_normalize="sum")
    assert ex["label"].dtype == np.float32 and ex["label"].shape == (5,) and ex["label_mask"].shape == (5,)
    assert ex["fixations"].shape == (len(rec.points_yx) + 7, 2) and ex["fixation_valid"].sum() == len(rec.points_yx)
    np.testing.assert_allclose(ex["fixation_sigma"][ex["fixation_valid"]], rec.sigma_yx)
    assert abs(float(ex["gaze_full"].sum()) - 1.0) < 1e-5 and "organ_masks" not in ex
    no_sigma = dataclasses.replace(rec, sigma_yx=None)
    with pytest.raises(ValueError, match="per-fixation sigma"):
        cp.make_example(no_sigma, GRIDS, sigma_px="dataset")
    empty = dataclasses.replace(rec, points_yx=np.zeros((0, 2), np.float32), durations=np.zeros(0, np.float32),
                                sigma_yx=np.zeros((0, 2), np.float32))
    ex = cp.make_example(empty, GRIDS, sigma_px="dataset", augment=True, rng=np.random.default_rng(0), max_fixations=4)
    assert not ex["has_gaze"] and not ex["gaze_cam"].any() and ex["fixations"].shape == (4, 2)


def test_augmented_example_keeps_gaze_and_masks_with_the_image(egd):
    rec = egd[3][7]
    base = cp.make_example(rec, GRIDS, sigma_px=10.0)
    for seed in range(3):
        ex = cp.make_example(rec, GRIDS, sigma_px=10.0, augment=True, rng=np.random.default_rng(seed), aug_cfg={})
        params = transforms2d.sample_affine(np.random.default_rng(seed), SIZE, transforms2d.AugmentConfig())
        np.testing.assert_array_equal(ex["organ_masks"], transforms2d.warp(base["organ_masks"], params, order=0))
        np.testing.assert_allclose(ex["fixations"], transforms2d.map_points(rec.points_yx, params), atol=1e-4)
        # analytic re-render vs warping the un-augmented map: the same picture up to interpolation
        for name in GRIDS:
            warped = transforms2d.warp(base[f"gaze_{name}"][..., 0], params)
            r = np.corrcoef(warped.ravel(), ex[f"gaze_{name}"][..., 0].ravel())[0, 1]
            assert r > 0.97, (name, r)
        assert ex["image"].shape == SIZE + (1,) and ex["image"].dtype == np.float32
        assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0


def test_cache_reused_and_invalidated_by_a_changed_source(egd, tmp_path, monkeypatch):
    root, mimic, cache, records = egd
    first = np.array(cxr_records.prepare_records("egd_cxr", root, mimic, str(tmp_path), SIZE)[0].image())
    path = egd_cxr.EGDCXR(root, mimic).records()[0].image_path

    def no_decoding(*a, **k):
        raise AssertionError("DICOM decoded although cached")

    monkeypatch.setattr(dicom, "read", no_decoding)
    again = cxr_records.prepare_records("egd_cxr", root, mimic, str(tmp_path), SIZE)  # from the .npy files only
    np.testing.assert_array_equal(again[0].image(), first)
    monkeypatch.undo()
    ds = pydicom.dcmread(path)  # rewrite the source: new pixels, new mtime -> re-read
    ds.PixelData = (4095 - ds.pixel_array).astype(np.uint16).tobytes()
    ds.save_as(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = cxr_records.prepare_records("egd_cxr", root, mimic, str(tmp_path), SIZE)
    np.testing.assert_allclose(changed[0].image(), ResizeTransform.fit(SRC, SIZE).apply(dicom.read(path)), atol=1e-6)
    assert np.abs(changed[0].image() - first).max() > 0.1
    os.remove(path)  # the cache is keyed on the source's stat: a missing source is an error, not a cache hit
    with pytest.raises(DataError, match="cannot stat DICOM"):
        cxr_records.prepare_records("egd_cxr", root, mimic, str(tmp_path), SIZE)


def test_splits_patient_level_stratified_and_test_fixed(egd):
    records = egd[3]
    parts = cp.split_records(records, "70/10/20", seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [21, 3, 6]
    patients = [{r.patient_id for r in parts[k]} for k in ("train", "val", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sorted(np.bincount([int(r.label) for r in parts["test"]], minlength=3)) == [2, 2, 2]
    tests = [[r.dicom_id for r in cp.split_records(records, "70/10/20", seed=s, ratio=q)["test"]]
             for s in (0, 1) for q in (1.0, 0.5)]
    assert all(t == tests[0] for t in tests)  # the test set never moves with the seed or the ratio
    cx = cp.split_records(records, "983/100", val_fraction=0.1)
    assert [len(cx[k]) for k in ("train", "val", "test")] == [24, 3, 3]  # 30 * 100/1083 -> 3 test images
    sub = cp.split_records(records, "70/10/20", seed=0, ratio=0.3)["train"]
    assert len(sub) == round(0.3 * 21) and {r.dicom_id for r in sub} <= {r.dicom_id for r in parts["train"]}
    fake = [cxr_records.CXRCase("d%d" % i, "p%d" % (i // 2), "", "", SIZE, SRC, np.zeros((0, 2)), np.zeros(0), None,
                       np.ones(2), np.int32(i % 3), np.bool_(True)) for i in range(1083)]
    big = cp.split_records(fake, "983/100")
    assert len(big["test"]) == 100 and len(big["train"]) + len(big["val"]) == 983 and len(big["val"]) == 98


def _config(dataset, cache_dir, **data):
    c = ml_collections.ConfigDict()
    c.seed = 0
    fields = dict(
        dataset=dataset, root="", mimic_root="", cache_dir=os.path.join(cache_dir, "cache"), image_size=SIZE,
        label_set="3class", label_policy="", split="70/10/20", ratio=1.0, seed=0, gaze_grids={"cam": (8, 8)},
        gaze_kind="gaussian", gaze_sigma=10.0, augment={"rotation": 5.0},
        synthetic={"dir": cache_dir, "images": 30, "seed": 4, "size": SRC})
    c.data = ml_collections.ConfigDict({**fields, **data})
    return c


def test_data_bundle_from_config(tmp_path):
    import grain

    bundle = DataBundle(**cp.bundle_parts(_config("egd_cxr", str(tmp_path))))
    assert bundle.num_train == len(bundle.train) == 21 and len(bundle.splits["test"]) == 6
    ex = bundle.train[0]
    assert ex["image"].shape == SIZE + (1,) and ex["gaze_cam"].shape == (8, 8, 1)
    assert ex["fixations"].shape == (bundle.info["max_fixations"], 2)
    assert set(bundle.info["test_ids"]).isdisjoint(bundle.info["train_ids"] + bundle.info["val_ids"])
    batch = next(iter(bundle.train.seed(0).random_map(bundle.augment).batch(4)))
    assert batch["image"].shape == (4,) + SIZE + (1,) and batch["organ_masks"].shape == (4,) + SIZE + (4,)
    test = bundle.splits["test"]
    assert isinstance(test.examples, grain.MapDataset) and len(test.examples) == len(test.records)
    c = _config("reflacx", str(tmp_path), augment=None, label_set="5label", gaze_sigma="dataset", split="983/100",
                ratio=0.5)
    bundle = DataBundle(**cp.bundle_parts(c))
    assert bundle.augment is None and bundle.train[0]["label"].shape == (5,)
    assert len(bundle.splits["test"]) == 3 and bundle.num_train == 12  # 0.5 of the 24 training images
