"""Synthetic BraTS: real layout and tables, determinism, atomic/idempotent generation, MRI-like contrasts, labels
learnable from the images, survival tied to tumour volume, and gaze that clusters on the tumour for experts."""
from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from gazejax.data.brats import reader as brats
from gazejax.data.synthetic import brats as synth
from gazejax.data.synthetic.__main__ import main as synthetic_main

SHAPE = (40, 40, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "set"
    root = synth.generate(str(out), cases=12, seed=7, shape=SHAPE, gaze_share=0.5, validation=1)
    cases = [brats.read_case(c) for c in brats.list_cases(root)]
    return root, cases


def _header(path):
    with open(path, newline="") as f:
        return next(csv.reader(f))


def test_layout_tables_and_dtypes(data):
    root, cases = data
    assert os.path.basename(root) == "MICCAI_BraTS2020_TrainingData" and len(cases) == 12
    assert _header(os.path.join(root, "survival_info.csv")) == ["Brats20ID", "Age", "Survival_days",
                                                                 "Extent_of_Resection"]
    assert _header(os.path.join(root, "name_mapping.csv")) == [
        "Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID", "BraTS_2019_subject_ID",
        "BraTS_2020_subject_ID"]
    case_dir = os.path.join(root, "BraTS20_Training_003")
    affines = []
    for kind in ("flair", "t1", "t1ce", "t2", "seg"):
        img = nib.load(os.path.join(case_dir, f"BraTS20_Training_003_{kind}.nii.gz"))
        assert img.shape == SHAPE and img.get_data_dtype() == (np.uint8 if kind == "seg" else np.int16)
        affines.append(img.affine)
    assert all(np.array_equal(a, affines[0]) for a in affines)
    assert np.linalg.det(affines[0][:3, :3]) == pytest.approx(1.0)  # 1 mm voxels, x and y flipped
    assert len(os.listdir(os.path.join(root, "gaze"))) == 6
    validation = os.path.join(os.path.dirname(root), "MICCAI_BraTS2020_ValidationData", "BraTS20_Validation_001")
    assert sorted(os.listdir(validation)) == [f"BraTS20_Validation_001_{m}.nii.gz" for m in ("flair", "t1", "t1ce",
                                                                                             "t2")]
    for case in cases:
        brain = case["image"][..., 0] > 0
        assert np.all((case["image"] > 0) == brain[..., None])  # skull-stripped: zero exactly outside the brain
        assert np.all(case["seg"][~brain] == 0) and np.count_nonzero(case["seg"]) > 50


def test_deterministic_atomic_idempotent(data, tmp_path):
    root, cases = data
    kwargs = dict(cases=2, seed=7, shape=SHAPE, gaze_share=0.5)
    again = synth.generate(str(tmp_path / "a"), **kwargs)
    for c in range(2):  # a case doesn't depend on the number of cases
        repeat = brats.read_case(brats.list_cases(again)[c])
        np.testing.assert_array_equal(repeat["image"], cases[c]["image"])
        np.testing.assert_array_equal(repeat["seg"], cases[c]["seg"])
    other = brats.read_case(brats.list_cases(synth.generate(str(tmp_path / "b"), **{**kwargs, "seed": 8}))[0])
    assert not np.array_equal(other["seg"], cases[0]["seg"])
    stamp = os.stat(os.path.join(again, "survival_info.csv")).st_mtime_ns
    assert synth.generate(str(tmp_path / "a"), **kwargs) == again  # finished: returned as is
    assert os.stat(os.path.join(again, "survival_info.csv")).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="made with"):
        synth.generate(str(tmp_path / "a"), **{**kwargs, "cases": 3})
    marker = tmp_path / "a" / synth.MARKER
    marker.write_text(marker.read_text().replace(f'"version": {synth._VERSION}', '"version": 0'))
    os.remove(os.path.join(again, "name_mapping.csv"))
    assert synth.generate(str(tmp_path / "a"), **kwargs) == again  # a set from an older generator is rebuilt
    assert os.path.isfile(os.path.join(again, "name_mapping.csv"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a finished"):
        synth.generate(str(tmp_path / "busy"), **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "busy"]  # no temporary folders left behind


def _region_means(case, label_sets, channel):
    image, seg = case["image"][..., channel], case["seg"]
    return [image[np.isin(seg, labels) & (image > 0)].mean() for labels in label_sets]


def test_contrasts(data):
    _, cases = data
    flair, t1, t1ce, t2 = range(4)
    for case in cases:
        normal_flair, edema_flair = _region_means(case, [(0,), (2,)], flair)
        assert edema_flair > 1.3 * normal_flair
        normal_t2, edema_t2 = _region_means(case, [(0,), (2,)], t2)
        assert edema_t2 > normal_t2
        normal_t1, tumour_t1 = _region_means(case, [(0,), (1, 2, 4)], t1)
        assert tumour_t1 < normal_t1
        if (case["seg"] == 4).sum() > 20 and (case["seg"] == 1).sum() > 20:
            necrosis, enhancing = _region_means(case, [(1,), (4,)], t1ce)
            assert enhancing > 2.0 * necrosis
    assert sum(int((c["seg"] == 4).any()) for c in cases) >= 6  # most cases are high grade


def test_whole_tumour_learnable_from_flair(data):
    """One threshold on FLAIR / median brain FLAIR, chosen on 8 cases, segments the whole tumour of the 4 held-out
    cases with mean Dice >= 0.8: the labels are plain in the image (a 3D UNet with context can only do better)."""
    _, cases = data
    prepared = []
    for case in cases:
        flair = case["image"][..., 0]
        prepared.append((flair / np.median(flair[flair > 0]), case["seg"] > 0))

    def dice(threshold, subset):
        return np.mean([2 * (f > threshold)[w].sum() / ((f > threshold).sum() + w.sum()) for f, w in subset])

    thresholds = np.linspace(1.0, 2.5, 31)
    best = thresholds[np.argmax([dice(t, prepared[:8]) for t in thresholds])]
    assert dice(best, prepared[8:]) >= 0.8


def test_survival_shorter_for_bigger_tumours(tmp_path):
    root = synth.generate(str(tmp_path / "s"), cases=40, seed=1, shape=(24, 24, 20), gaze_share=0.0)
    survival = brats.read_survival(root)
    volume, days = [], []
    for case_dir in brats.list_cases(root):
        info = survival.get(os.path.basename(case_dir))
        if info and info["survival_days"] is not None and not info["censored"]:
            seg = np.asarray(nib.load(os.path.join(case_dir, os.path.basename(case_dir) + "_seg.nii.gz")).dataobj)
            volume.append(np.count_nonzero(seg))
            days.append(info["survival_days"])
    assert len(days) >= 25
    assert stats.spearmanr(volume, days).statistic < -0.4
    assert len({v["survival_class"] for v in survival.values()} - {-1}) == 3  # all three classes occur


def test_gaze_experts_on_tumour(data):
    root, cases = data
    with_gaze = [c for c in cases if brats.gaze_path(os.path.join(root, "gaze"), c["case_id"])]
    assert len(with_gaze) == 6
    for case in with_gaze:
        fix = brats.read_fixations(brats.gaze_path(os.path.join(root, "gaze"), case["case_id"]))
        assert set(zip(fix.reader_id, fix.expertise)) == {("R1", "expert"), ("R2", "expert"),
                                                          ("N1", "non_expert"), ("N2", "non_expert")}
        assert np.all(fix.slice_axis == 2) and np.all((fix.points >= 0) & (fix.points <= np.array(SHAPE) - 1))
        assert np.all((fix.duration_s >= 0.1) & (fix.duration_s <= 0.8))
        near_tumour = ndimage.binary_dilation(case["seg"] > 0, iterations=2)
        on_tumour = {}
        for reader in ("R1", "R2", "N1", "N2"):
            mine = fix.take(fix.reader_id == reader)
            assert 30 <= len(mine) <= 150 and np.all(np.diff(mine.start_s) > 0)
            voxels = np.rint(mine.points).astype(int)
            on_tumour[reader] = near_tumour[tuple(voxels.T)].mean()
        assert min(on_tumour["R1"], on_tumour["R2"]) > 0.8
        assert max(on_tumour["N1"], on_tumour["N2"]) < 0.7


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic_main(["brats", "--out", str(out), "--cases", "2", "--seed", "3", "--shape", "20", "20", "16",
                           "--gaze-share", "0.5", "--validation", "1"]) == 0
    root = capsys.readouterr().out.strip()
    assert root == str(out / "MICCAI_BraTS2020_TrainingData")
    assert brats.read_case(brats.list_cases(root)[1])["image"].shape == (20, 20, 16, 4)
    assert len(os.listdir(os.path.join(root, "gaze"))) == 1
    assert len(brats.list_cases(out / "MICCAI_BraTS2020_ValidationData")) == 1
