"""Tests of the REFLACX reader: a synthetic data set read back against the generator's own record
(synthetic_truth.json), the official sigma / duration / certainty rules, outside-rectangle policies and bad input."""
from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from gazejax.data.cxr.labels import make_labels
from gazejax.data.errors import DataError
from gazejax.data.cxr.reflacx import PHASE_LABELS, REFLACX
from gazejax.data.synthetic.cxr import generate_reflacx, read_truth

SIZE = (144, 120)
N = 16  # 2 images x 3 readings in phases 1 and 2, 12 single readings in phase 3, one discarded extra reading


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """root, mimic (MIMIC-CXR root) and truth (the generator's record) of a small synthetic REFLACX."""
    root, mimic = generate_reflacx(str(tmp_path_factory.mktemp("reflacx")), images=N, seed=2, size=SIZE)
    return SimpleNamespace(root=root, mimic=mimic, truth=read_truth(root))


def test_readings_round_trip(data):
    root, mimic, truth = data.root, data.mimic, data.truth
    readings = REFLACX(root, mimic, group_by="reading").records()
    expected = {rid: r for t in truth.values() for rid, r in t["readings"].items()}
    assert len(readings) == 2 * 3 + 2 * 3 + 12 == len(expected)
    discarded = {rid for t in truth.values() for rid in t["discarded"]}
    assert len(discarded) == 1 and not discarded & {r.meta["reading_ids"][0] for r in readings}
    for rec in readings:
        rid = rec.meta["reading_ids"][0]
        want, f = expected[rid], rec.fixations
        np.testing.assert_array_equal(f.points, want["points"])  # the two off-image fixations are dropped
        np.testing.assert_allclose(f.durations, want["durations"], atol=1e-6)  # end - start
        np.testing.assert_array_equal(f.sigma, want["sigma"])  # 1 degree = pixels per degree (x, y)
        np.testing.assert_array_equal(f.sigma_yx, np.array(want["sigma"])[:, ::-1])
        assert set(f.readers) == {rid} and f.shown_rects.shape == (len(f), 4)
        for name, certainty in want["labels"].items():
            assert rec.labels[name] == (float(certainty == "True") if certainty in ("True", "False")
                                        else float(int(certainty) >= 3))
        assert rec.meta["image_size"] == SIZE and rec.meta["phases"][0] in (1, 2, 3)
        assert set(rec.labels) == set(PHASE_LABELS[rec.meta["phases"][0]])


def test_images_grouped_and_labelled(data):
    root, mimic, truth = data.root, data.mimic, data.truth
    reader = REFLACX(root, mimic)
    records = reader.records()
    assert [r.dicom_id for r in records] == list(truth)
    for rec in records:
        t = truth[rec.dicom_id]
        assert sorted(rec.meta["reading_ids"]) == sorted(t["readings"])
        assert len(rec.fixations) == sum(len(r["points"]) for r in t["readings"].values())
        assert rec.boxes["chest"].shape == (len(t["readings"]), 4)
        assert os.path.isfile(rec.image_path) and rec.image_path.endswith(f"/s{rec.study_id}/{rec.dicom_id}.dcm")
        assert rec.patient_id in rec.image_path
        for finding, label in [("cardiomegaly", "Enlarged cardiac silhouette"), ("consolidation", "Consolidation")]:
            assert (f"ellipse/{label}" in rec.boxes) == (finding in t["findings"])
    y, mask = make_labels(records, "5label")
    want = [[f in t["findings"] for f in ("atelectasis", "cardiomegaly", "consolidation", "edema", "effusion")]
            for t in truth.values()]
    np.testing.assert_array_equal(y, np.array(want, np.float32))
    assert mask.all()
    img = reader.load_image(records[0])
    assert img.shape == SIZE and img.dtype == np.float32
    with pytest.raises(DataError, match="3class"):
        make_labels(records, "3class")


def test_majority_and_threshold(data):
    root, mimic = data.root, data.mimic
    rec = next(r for r in REFLACX(root, mimic).records() if len(r.meta["reading_ids"]) == 3)
    for name, value in rec.labels.items():
        certainties = [labels[name] for labels in rec.meta["reading_labels"].values()]
        if name in ("Support devices", "Quality issue"):
            continue
        assert value == float(np.mean([c >= 3 for c in certainties]) >= 0.5)
    strict = next(r for r in REFLACX(root, mimic, positive_certainty=5).records() if r.dicom_id == rec.dicom_id)
    for name, value in strict.labels.items():
        if name not in ("Support devices", "Quality issue"):
            assert value == float(np.mean([c >= 5 for c in
                                           (lab[name] for lab in rec.meta["reading_labels"].values())]) >= 0.5)


def test_outside_policies(data):
    root, mimic = data.root, data.mimic
    drop = {r.meta["reading_ids"][0]: r.fixations for r in REFLACX(root, mimic, group_by="reading").records()}
    keep = {r.meta["reading_ids"][0]: r.fixations
            for r in REFLACX(root, mimic, group_by="reading", outside="keep").records()}
    clip = {r.meta["reading_ids"][0]: r.fixations
            for r in REFLACX(root, mimic, group_by="reading", outside="clip").records()}
    for rid, f in drop.items():
        assert len(keep[rid]) == len(clip[rid]) == len(f) + 2
        off = keep[rid].points[-2:]
        assert (off[0, 0] < 0) and (off[1, 1] > SIZE[0])  # gaze on the interface, off the image
        assert np.all(clip[rid].points >= 0) and np.all(clip[rid].points <= np.array(SIZE[::-1]) - 1)
        np.testing.assert_array_equal(clip[rid].points[:-2], f.points)


def test_bad_input(tmp_path, data):
    with pytest.raises(DataError, match="metadata_phase"):
        REFLACX(tmp_path, tmp_path).records()
    root = tmp_path / "copy"
    shutil.copytree(data.root, root)
    meta = root / "main_data" / "metadata_phase_3.csv"
    text = meta.read_text().splitlines()
    bad = text[1].split(",")
    bad[3] = "some/where/image.png"
    meta.write_text("\n".join([text[0], ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"metadata_phase_3.csv: reading .* no files/pXX"):
        REFLACX(str(root), data.mimic, phases=(3,)).records()
    with pytest.raises(ValueError, match="outside"):
        REFLACX(str(root), data.mimic, outside="ignore")
