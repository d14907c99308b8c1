"""Tests of the EGD-CXR reader and the CXR label sets: a synthetic data set read back against the generator's own
record (synthetic_truth.json), hand-written minimal CSVs for the DICOM_ID defects, the data set's screen-to-image
formula by hand, and label policies on hand-built records."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from gazejax.data.cxr.labels import CXRRecord, Fixations, LabelPolicy, make_labels
from gazejax.data.cxr.egd_cxr import CHEXPERT_COLUMNS, EGDCXR, display_pads, match_prefixes, screen_to_image
from gazejax.data.errors import DataError
from gazejax.data.synthetic.cxr import generate_egd_cxr, read_truth

SIZE = (160, 128)
N = 21  # images 0 and 20 are preceded by a calibration screen


@pytest.fixture(scope="module")
def egd(tmp_path_factory):
    root, mimic = generate_egd_cxr(str(tmp_path_factory.mktemp("egd")), images=N, seed=5, size=SIZE)
    return root, mimic, read_truth(root)


def test_records_labels_and_fixations(egd):
    root, mimic, truth = egd
    reader = EGDCXR(root, mimic)
    records = reader.records()
    assert [r.dicom_id for r in records] == list(truth)  # master-sheet order
    for rec in records:
        t = truth[rec.dicom_id]
        assert [c for c in ("Normal", "CHF", "pneumonia") if rec.labels[c] == 1] == [t["class"]]
        for finding, col in [("cardiomegaly", "cardiomegaly__chx"), ("effusion", "pleural_effusion__chx"),
                             ("consolidation", "consolidation__chx")]:
            value = rec.labels[col]
            assert value in (1.0, -1.0) if finding in t["findings"] else (np.isnan(value) or value == 0.0)
        assert set(CHEXPERT_COLUMNS) <= set(rec.labels)
        pts = np.array(t["points"])
        # X/Y_ORIGINAL = int() of the mapped gaze; the two off-image fixations per image are dropped
        np.testing.assert_array_equal(rec.fixations.points, np.floor(pts))
        np.testing.assert_allclose(rec.fixations.durations, t["durations"], atol=1e-5)
        assert set(rec.fixations.readers) == {"egd_cxr"} and rec.fixations.sigma is None
        assert rec.image_path.startswith(mimic) and os.path.isfile(rec.image_path)
        assert rec.meta["pads"] == (0.0, 0.0, 550.0, 551.0)  # 160 x 128 shown 1024 x 819 on 1920 x 1080


def test_fpog_coordinates(egd):
    root, mimic, truth = egd
    for rec in EGDCXR(root, mimic, coords="fpog").records():
        np.testing.assert_allclose(rec.fixations.points, truth[rec.dicom_id]["points"], atol=1e-3)


def test_display_pads_match_real_rows():
    # master_sheet rows of the release: a 3056 x 2544 DICOM has pads 0,0,534,534; a landscape one 86,86,448,448
    assert display_pads(3056, 2544) == (0, 0, 534, 534)
    assert display_pads(2544, 3056) == (86, 86, 448, 448)


def test_screen_to_image_by_hand():
    # portrait 3056 x 2544 shown 1024 high: pads (0, 0, 534, 535) -> 851 px wide, 1080 high (the mapping's)
    got = screen_to_image(np.array([[0.5, 0.5], [0.25, 0.1]]), (0, 0, 534, 535), (3056, 2544))
    np.testing.assert_allclose(got[0], [(960 - 534) * 2544 / 851, 540 * 3056 / 1080])
    np.testing.assert_allclose(got[1], [(480 - 534) * 2544 / 851, 108 * 3056 / 1080])
    # the data set's sample row: landscape pads (86, 86, 448, 448) -> 1024 x 908 screen pixels
    got = screen_to_image(np.array([[0.45224, 0.33879]]), (86, 86, 448, 448), (2000, 2400))[0]
    np.testing.assert_allclose(got, [(0.45224 * 1920 - 448) * 2400 / 1024, (0.33879 * 1080 - 86) * 2000 / 908])


def test_images_masks_boxes(egd):
    root, mimic, _ = egd
    reader = EGDCXR(root, mimic)
    for i, rec in enumerate(reader.records()[:6]):  # image 4 is stored MONOCHROME1
        img = reader.load_image(rec)
        assert img.shape == SIZE and img.dtype == np.float32
        right, left = reader.load_mask(rec, "right_lung"), reader.load_mask(rec, "left_lung")
        med = reader.load_mask(rec, "mediastanum")
        assert np.nonzero(right)[1].mean() < SIZE[1] / 2 < np.nonzero(left)[1].mean()  # patient's right on the left
        assert img[right | left].mean() < img[med].mean() - 0.2  # lungs dark in every polarity
        ys, xs = np.nonzero(right)
        np.testing.assert_array_equal(rec.boxes["right lung"], [[xs.min(), ys.min(), xs.max(), ys.max()]])
    with pytest.raises(ValueError, match="mask name"):
        reader.load_mask(rec, "heart")


def test_truncated_calibration_ids(egd):
    root, mimic, truth = egd
    dropped = {r.dicom_id: len(r.fixations) for r in EGDCXR(root, mimic).records()}
    matched = {r.dicom_id: r.fixations for r in EGDCXR(root, mimic, truncated_ids="match").records()}
    ids = list(truth)
    for i, did in enumerate(ids):
        extra = 3 if i % 20 == 0 else 0  # the calibration screen's 3 fixations join the image they prefix
        assert len(matched[did]) == dropped[did] + extra
    calib = matched[ids[0]].points[:3]  # screen pixels around the centre dot (960, 540)
    assert np.all(np.abs(calib - [960, 540]) < 60)


def test_eye_gaze_samples(egd):
    root, mimic, truth = egd
    fix = {r.dicom_id: r.fixations for r in EGDCXR(root, mimic).records()}
    for rec in EGDCXR(root, mimic, source="eye_gaze").records()[:5]:
        f = rec.fixations
        assert len(f) >= len(fix[rec.dicom_id])
        # a sample lasts until the next one: 1/60 s within a fixation, plus the saccade gap at its end
        assert np.mean(np.abs(f.durations - 1 / 60) < 1e-4) > 0.8
        assert np.median(f.durations) == pytest.approx(1 / 60, abs=1e-4)
        assert np.all((f.durations > 0) & (f.durations < 0.1)) and np.all(np.diff(f.start_times) > 0)
        assert set(map(tuple, f.points)) == set(map(tuple, fix[rec.dicom_id].points))


def _tiny(tmp_path, ids, gaze_ids):
    """Minimal EGD-CXR tables by hand: master sheet + fixations, no images needed for coords='original'."""
    pads = "0,0,10,10"
    lines = ["dicom_id,path,study_id,patient_id,image_top_pad,image_bottom_pad,image_left_pad,image_right_pad,"
             "Normal,CHF,pneumonia"] + [f"{d},files/p1/p1/s1/{d}.dcm,1,1,{pads},1,0,0" for d in ids]
    (tmp_path / "master_sheet.csv").write_text("\n".join(lines) + "\n")
    rows = ["DICOM_ID,Time (in secs),FPOGX,FPOGY,FPOGS,FPOGD,X_ORIGINAL,Y_ORIGINAL"]
    rows += [f"{g},1.0,0.5,0.5,0.7,0.3,{10 + k},{20 + k}" for k, g in enumerate(gaze_ids)]
    (tmp_path / "fixations.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path)


def test_prefix_matching(tmp_path):
    with pytest.raises(DataError, match="abc-123"):
        match_prefixes(["abc-123"], ["abc-1234", "abc-1235"])
    assert match_prefixes(["abd", "zz", "abc-120"], ["abd-9", "abc-1234", "abc-120"]) == {
        "abd": "abd-9", "zz": None, "abc-120": "abc-120"}
    root = _tiny(tmp_path, ["aaaa-1111", "aaaa-2222", "bbbb-3333"], ["aaaa-1111", "bbbb-3", "aaaa-"])
    with pytest.raises(DataError, match="aaaa-"):
        EGDCXR(root, "/nonexistent", truncated_ids="match").records()
    root = _tiny(tmp_path, ["aaaa-1111", "aaaa-2222", "bbbb-3333"], ["aaaa-1111", "bbbb-3", "cccc"])
    got = {r.dicom_id: r.fixations.points.tolist() for r in EGDCXR(root, "/x", truncated_ids="match").records()}
    assert got == {"aaaa-1111": [[10, 20]], "aaaa-2222": [], "bbbb-3333": [[11, 21]]}
    got = {r.dicom_id: len(r.fixations) for r in EGDCXR(root, "/x").records()}
    assert got == {"aaaa-1111": 1, "aaaa-2222": 0, "bbbb-3333": 0}


def test_malformed_tables(tmp_path, egd):
    root = _tiny(tmp_path, ["a-1"], ["a-1"])
    (tmp_path / "fixations.csv").write_text("DICOM_ID,FPOGX\na-1,0.5\n")
    with pytest.raises(DataError, match=r"fixations.csv: missing columns"):
        EGDCXR(root, "/x").records()
    copy = tmp_path / "copy"
    shutil.copytree(egd[0], copy)
    with open(copy / "master_sheet.csv", "a") as f:
        f.write(open(copy / "master_sheet.csv").read().splitlines()[1] + "\n")
    with pytest.raises(DataError, match="duplicate dicom_id"):
        EGDCXR(str(copy), egd[1]).records()
    with pytest.raises(ValueError, match="coords"):
        EGDCXR(root, "/x", coords="screen")


def _rec(**labels):
    return CXRRecord("d", "p", "s", "x.dcm", {k: float(v) for k, v in labels.items()}, Fixations.empty())


def test_label_sets_and_policies(egd):
    root, mimic, truth = egd
    records = EGDCXR(root, mimic).records()
    y, mask = make_labels(records, "3class")
    assert mask.all() and [("Normal", "CHF", "pneumonia")[k] for k in y] == [t["class"] for t in truth.values()]
    y5, m5 = make_labels(records, "5label")
    want = [[f in t["findings"] for f in ("atelectasis", "cardiomegaly", "consolidation", "edema", "effusion")]
            for t in truth.values()]
    np.testing.assert_array_equal(y5, np.array(want, np.float32))  # uncertain -> 1, blank -> 0
    assert m5.all()
    nan = float("nan")
    recs = [_rec(atelectasis__chx=1, cardiomegaly__chx=-1, consolidation__chx=0, edema__chx=nan)]
    cases = {None: ([1, 1, 0, 0, 0], [1, 1, 1, 1, 1]), "zeros": ([1, 0, 0, 0, 0], [1, 1, 1, 1, 1]),
             "ignore": ([1, 0, 0, 0, 0], [1, 0, 1, 1, 1]),
             "uncertain=ones,blank=ignore": ([1, 1, 0, 0, 0], [1, 1, 1, 0, 0]),
             LabelPolicy("zeros", "ones"): ([1, 0, 0, 1, 1], [1, 1, 1, 1, 1])}
    for policy, (yy, mm) in cases.items():
        got_y, got_m = make_labels(recs, "5label", policy)
        np.testing.assert_array_equal(got_y[0], yy)
        np.testing.assert_array_equal(got_m[0], np.array(mm, bool))
    y, mask = make_labels([_rec(Normal=0, CHF=1, pneumonia=1), _rec(Normal=0, CHF=0, pneumonia=1)], "3class")
    assert mask.tolist() == [False, True] and y[1] == 2
    with pytest.raises(DataError, match="3class"):
        make_labels([_rec(Atelectasis=1)], "3class")
    with pytest.raises(ValueError):
        LabelPolicy.parse("maybe")
    with pytest.raises(ValueError, match="label_set"):
        make_labels(recs, "14label")
