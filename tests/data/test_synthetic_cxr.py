"""Tests of gazejax.data.synthetic.cxr: real layouts and headers, CLI, determinism and idempotent atomic writes,
findings visible in the pixels (measured on the phantom independently of how it was drawn), scan paths that dwell
on findings, and patients with several studies."""
from __future__ import annotations

import csv
import filecmp
import json
import os
import re

import numpy as np
import pydicom
import pytest

from gazejax.data.cxr import egd_cxr, reflacx
from gazejax.data.synthetic import __main__ as synthetic_main
from gazejax.data.synthetic import cxr, cxr_phantom

SIZE = (128, 104)
# master_sheet.csv header of the PhysioNet release (egd-cxr 1.0.0), as quoted in public exploration notes
REAL_MASTER_HEADER = (
    "dicom_id,path,study_id,patient_id,stay_id,gender,anchor_age,image_top_pad,image_bottom_pad,image_left_pad,"
    "image_right_pad,dx1,dx1_icd,dx2,dx2_icd,dx3,dx3_icd,dx4,dx4_icd,dx5,dx5_icd,dx6,dx6_icd,dx7,dx7_icd,dx8,"
    "dx8_icd,dx9,dx9_icd,normal_reports,Normal,CHF,pneumonia,consolidation,enlarged_cardiac_silhouette,"
    "linear__patchy_atelectasis,lobar__segmental_collapse,"
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__,pleural_effusion_or_thickening,"
    "pulmonary_edema__hazy_opacity,normal_anatomically,elevated_hemidiaphragm,hyperaeration,"
    "vascular_redistribution,atelectasis__chx,cardiomegaly__chx,consolidation__chx,edema__chx,"
    "enlarged_cardiomediastinum__chx,fracture__chx,lung_lesion__chx,lung_opacity__chx,no_finding__chx,"
    "pleural_effusion__chx,pleural_other__chx,pneumonia__chx,pneumothorax__chx,support_devices__chx,"
    "cxr_exam_indication")


def _header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_cli_writes_real_layouts(tmp_path, capsys):
    assert synthetic_main.main(["egd_cxr", "--out", str(tmp_path), "--images", "6", "--seed", "1",
                                "--size", *map(str, SIZE)]) == 0
    assert "egd_cxr: root=" in capsys.readouterr().out
    root, mimic = tmp_path / "egd_cxr" / "egd-cxr", tmp_path / "egd_cxr" / "mimic-cxr"
    assert ",".join(_header(root / "master_sheet.csv")) == REAL_MASTER_HEADER
    for table in ("fixations.csv", "eye_gaze.csv"):
        assert tuple(_header(root / table)) == egd_cxr.GAZE_COLUMNS
    assert _header(root / "bounding_boxes.csv") == ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"]
    with open(root / "master_sheet.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert re.fullmatch(r"files/p(\d\d)/p\1\d{6}/s\d{8}/[0-9a-f]{8}(-[0-9a-f]{8}){4}\.dcm", row["path"])
        ds = pydicom.dcmread(mimic / row["path"])
        assert (ds.Rows, ds.Columns) == SIZE and ds.PatientID == row["patient_id"]
        for organ in egd_cxr.ORGANS:
            assert (root / "audio_segmentation_transcripts" / row["dicom_id"] / f"{organ}.png").is_file()
    assert synthetic_main.main(["reflacx", "--out", str(tmp_path), "--images", "9", "--size", *map(str, SIZE)]) == 0
    main = tmp_path / "reflacx" / "reflacx" / "main_data"
    for phase in (1, 2, 3):
        assert tuple(_header(main / f"metadata_phase_{phase}.csv")) == reflacx.META_COLUMNS + reflacx.PHASE_LABELS[
            phase]
    reading = next(p for p in main.iterdir() if p.is_dir())
    assert tuple(_header(reading / "fixations.csv")) == reflacx.FIXATION_COLUMNS
    assert _header(reading / "chest_bounding_box.csv") == ["xmin", "ymin", "xmax", "ymax"]
    assert _header(reading / "anomaly_location_ellipses.csv")[:5] == ["xmin", "ymin", "xmax", "ymax", "certainty"]


def test_deterministic_and_idempotent(tmp_path):
    a = cxr.generate_egd_cxr(str(tmp_path / "a"), images=5, seed=3, size=SIZE)
    stamp = tmp_path / "a" / "egd_cxr" / ".complete.json"
    before = os.stat(stamp).st_mtime_ns
    assert cxr.generate_egd_cxr(str(tmp_path / "a"), images=5, seed=3, size=SIZE) == a  # reused, not rebuilt
    assert os.stat(stamp).st_mtime_ns == before
    b = cxr.generate_egd_cxr(str(tmp_path / "b"), images=5, seed=3, size=SIZE)
    cmp = filecmp.dircmp(tmp_path / "a" / "egd_cxr", tmp_path / "b" / "egd_cxr")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for name in ("fixations.csv", "master_sheet.csv"):
        assert filecmp.cmp(os.path.join(a[0], name), os.path.join(b[0], name), shallow=False)
    dcm = sorted(str(p) for p in (tmp_path / "a").rglob("*.dcm"))[0]
    assert filecmp.cmp(dcm, dcm.replace(os.sep + "a" + os.sep, os.sep + "b" + os.sep), shallow=False)
    cxr.generate_egd_cxr(str(tmp_path / "a"), images=4, seed=3, size=SIZE)  # other params: rebuilt in place
    with open(a[0] + "/synthetic_truth.json") as f:
        assert len(json.load(f)) == 4
    assert [p for p in os.listdir(tmp_path / "a") if p != "egd_cxr"] == []  # no temp dirs left behind


def _lung_profile(img, masks, row):
    """Width of the dark lung fields and of the bright heart on one image row (pixels)."""
    lungs = masks["right_lung"] | masks["left_lung"]
    cols = np.nonzero(lungs.any(axis=0))[0]
    bright = img[row, cols.min():cols.max() + 1] > 0.6
    return cols.max() - cols.min() + 1, bright


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_findings_visible(seed):
    h, w = 256, 208

    def draw(findings):
        return cxr_phantom.phantom(h, w, findings, np.random.default_rng(seed))

    normal, masks, _ = draw([])
    row = int(0.63 * h)  # heart level
    thorax, bright_normal = _lung_profile(normal, masks, row)
    big, big_masks, _ = draw(["cardiomegaly"])
    _, bright_big = _lung_profile(big, big_masks, row)
    # cardiothoracic ratio: the bright central run (heart + spine) widens with cardiomegaly
    assert bright_big.sum() / thorax > bright_normal.sum() / thorax + 0.08
    for finding in ("consolidation", "atelectasis", "effusion", "edema"):
        img, _, regions = draw([finding])
        x, y, sx, sy = regions[finding]
        win = (slice(int(y - sy), int(y + sy) + 1), slice(int(x - sx), int(x + sx) + 1))
        assert img[win].mean() > normal[win].mean() + 0.05, finding  # opacity where the finding is
        lungs = masks["right_lung"] | masks["left_lung"]
        assert img[lungs].mean() > normal[lungs].mean(), finding


def test_scanpaths_dwell_on_findings():
    rng = np.random.default_rng(0)
    _, _, regions = cxr_phantom.phantom(256, 208, ["consolidation", "cardiomegaly"], rng)
    for focus, least in [(1.0, 3), (0.4, 1)]:
        pts, dur = cxr_phantom.scanpath(regions, ["consolidation", "cardiomegaly"], (256, 208), rng, focus)
        x, y, sx, sy = regions["consolidation"]
        near = np.hypot((pts[:, 0] - x) / sx, (pts[:, 1] - y) / sy) < 3
        assert near.sum() >= least and dur[near].mean() > 0.3
        assert pts.min() >= 0 and pts[:, 0].max() < 208 and pts[:, 1].max() < 256
    lungs_visited = sum(k.startswith(("right", "left")) for k in regions)
    assert lungs_visited == 8  # tour: 3 zones per lung and both costophrenic angles


def test_cases_balanced_with_repeat_patients():
    cases = cxr_phantom.sample_cases(40, seed=7)
    counts = np.bincount([c["class"] for c in cases], minlength=3)
    assert counts.max() - counts.min() <= 1
    patients = [c["patient_id"] for c in cases]
    assert len(set(patients)) < len(patients) and len({c["study_id"] for c in cases}) == 40
    assert all({"cardiomegaly", "edema"} <= set(c["findings"]) for c in cases if c["class"] == 1)
    assert all(not c["findings"] for c in cases if c["class"] == 0)
    assert all("consolidation" in c["findings"] for c in cases if c["class"] == 2)
    with pytest.raises(ValueError):
        cxr.generate_reflacx("/tmp/never", images=0)
