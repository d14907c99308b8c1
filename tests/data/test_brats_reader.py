"""BraTS 2020 reader: synthetic round trip, real nibabel NIfTI samples, survival parsing, fixations, and one clear
DataError per kind of malformed input."""
from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from gazejax.data.brats import reader as brats
from gazejax.data.errors import DataError
from gazejax.data.synthetic import brats as synth

CASE = "BraTS20_Training_001"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("brats_reader") / "set"
    return synth.generate(str(out), cases=2, seed=5, shape=(24, 28, 20), gaze_share=1.0, validation=1)


@pytest.fixture()
def case_dir(root, tmp_path) -> str:
    """A private copy of case 001 to damage."""
    return shutil.copytree(os.path.join(root, CASE), tmp_path / CASE)


def _path(case_dir, kind, suffix=".nii.gz") -> str:
    return os.path.join(case_dir, f"{CASE}_{kind}{suffix}")


def _resave(path, data, affine=None):
    old = nib.load(path)
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), path)


def _expect_error(case_dir, *words):
    with pytest.raises(DataError) as err:
        brats.read_case(case_dir)
    message = str(err.value)
    assert "\n" not in message
    for word in (CASE,) + words:
        assert word in message, message
    return message


def test_round_trip_matches_nibabel(root):
    cases = brats.list_cases(root)
    assert [os.path.basename(c) for c in cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    case = brats.read_case(cases[0])
    assert case["case_id"] == CASE and case["spacing"] == (1.0, 1.0, 1.0)
    assert case["image"].shape == (24, 28, 20, 4) and case["image"].dtype == np.float32
    for m, modality in enumerate(("flair", "t1", "t1ce", "t2")):  # channel order fixed by the brief
        on_disk = nib.load(_path(cases[0], modality))
        assert on_disk.get_data_dtype() == np.int16
        np.testing.assert_array_equal(case["image"][..., m], np.asarray(on_disk.dataobj, dtype=np.float32))
    seg = nib.load(_path(cases[0], "seg"))
    np.testing.assert_array_equal(case["seg"], np.asarray(seg.dataobj))
    assert case["seg"].dtype == np.uint8 and set(np.unique(case["seg"])) <= {0, 1, 2, 4}
    np.testing.assert_allclose(case["affine"], seg.affine)


def test_validation_case_has_no_seg(root):
    validation = os.path.join(os.path.dirname(root), synth.VALIDATION_DIR)
    (case_dir,) = brats.list_cases(validation)
    case = brats.read_case(case_dir)
    assert case["seg"] is None and case["image"].shape == (24, 28, 20, 4)


def test_list_cases_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        brats.list_cases(tmp_path / "nope")
    (tmp_path / "BraTS20_Training_001").mkdir()
    with pytest.raises(DataError, match="no BraTS cases"):
        brats.list_cases(tmp_path)


def test_uncompressed_nii_and_case_355_seg_name(root, case_dir):
    expected = brats.read_case(os.path.join(root, CASE))
    for kind in ("flair", "t1", "t1ce", "t2", "seg"):
        img = nib.load(_path(case_dir, kind))
        target = (_path(case_dir, kind, ".nii") if kind != "seg"
                  else os.path.join(case_dir, "W39_1998.09.19_Segm.nii"))  # the real case 355 name
        nib.save(img, target)
        os.remove(_path(case_dir, kind))
    case = brats.read_case(case_dir)
    np.testing.assert_array_equal(case["image"], expected["image"])
    np.testing.assert_array_equal(case["seg"], expected["seg"])


def test_float_seg_with_integer_values_is_accepted(case_dir):
    seg = np.asarray(nib.load(_path(case_dir, "seg")).dataobj)
    _resave(_path(case_dir, "seg"), seg.astype(np.float32))
    out = brats.read_case(case_dir)["seg"]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, seg)


def test_missing_modality(case_dir):
    os.remove(_path(case_dir, "t1ce"))
    _expect_error(case_dir, "t1ce", "missing")


def test_shape_mismatch(case_dir):
    _resave(_path(case_dir, "t2"), np.ones((24, 28, 19), np.int16))
    _expect_error(case_dir, f"{CASE}_t2.nii.gz", "shape")


def test_affine_mismatch_and_tolerance(case_dir):
    data = np.asarray(nib.load(_path(case_dir, "t1")).dataobj)
    affine = synth.phantom_affine((24, 28, 20))
    nudged = affine.copy()
    nudged[:3] += 5e-4  # within atol 1e-3
    _resave(_path(case_dir, "t1"), data, nudged)
    brats.read_case(case_dir)
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    _resave(_path(case_dir, "t1"), data, shifted)
    _expect_error(case_dir, f"{CASE}_t1.nii.gz", "affine")


@pytest.mark.parametrize("bad, shown", [(3.0, "3"), (1.5, "non-integer")])
def test_bad_labels(case_dir, bad, shown):
    seg = np.asarray(nib.load(_path(case_dir, "seg")).dataobj).astype(np.float32)
    seg[0, 0, 0] = bad
    _resave(_path(case_dir, "seg"), seg)
    message = _expect_error(case_dir, f"{CASE}_seg.nii.gz", shown)
    assert bad != 3.0 or "outside" in message


def test_nan_voxel(case_dir):
    flair = np.asarray(nib.load(_path(case_dir, "flair")).dataobj).astype(np.float32)
    flair[3, 4, 5] = np.nan
    _resave(_path(case_dir, "flair"), flair)
    _expect_error(case_dir, f"{CASE}_flair.nii.gz", "1 NaN/Inf")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_gzip(case_dir, keep):
    path = _path(case_dir, "t2")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    _expect_error(case_dir, f"{CASE}_t2.nii.gz", "unreadable")


def test_load_nifti_reads_nibabel_samples():
    """Real NIfTI files shipped with nibabel: values equal nibabel's own decoding, geometry as documented."""
    data, affine, zooms = brats.load_nifti(os.path.join(NIBABEL_DATA, "anatomical.nii"))
    assert data.shape == (33, 41, 25) and zooms == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(affine, [[-2, 0, 0, 32], [0, 2, 0, -40], [0, 0, 2, -16], [0, 0, 0, 1]])
    np.testing.assert_array_equal(data, nib.load(os.path.join(NIBABEL_DATA, "anatomical.nii")).get_fdata())
    data4, _, zooms4 = brats.load_nifti(os.path.join(NIBABEL_DATA, "example4d.nii.gz"))
    assert data4.shape == (128, 96, 24, 2) and data4.dtype == np.int16
    assert zooms4[:2] == (2.0, 2.0)


def test_read_case_on_real_brain_volume(tmp_path):
    """A real (non-synthetic) brain volume through the full reader, as four modalities of one validation case."""
    case_dir = tmp_path / "BraTS20_Validation_007"
    case_dir.mkdir()
    for modality in brats.MODALITIES:
        shutil.copy(os.path.join(NIBABEL_DATA, "anatomical.nii"), case_dir / f"{case_dir.name}_{modality}.nii")
    case = brats.read_case(case_dir)
    assert case["image"].shape == (33, 41, 25, 4) and case["seg"] is None and case["spacing"] == (2.0, 2.0, 2.0)
    assert np.array_equal(case["image"][..., 0], case["image"][..., 3])


def test_read_survival(tmp_path):
    assert brats.read_survival(tmp_path) == {}
    (tmp_path / "survival_info.csv").write_text(
        "Brats20ID,Age,Survival_days,Extent_of_Resection\n"
        "BraTS20_Training_001,60.463,289,GTR\n"
        "BraTS20_Training_002,52.263,ALIVE (361 days later),\n"
        "BraTS20_Training_003,,,NA\n"
        "BraTS20_Training_004,70,304,STR\n"   # 304 < 304.4 days (10 months): short
        "BraTS20_Training_005,70,305,STR\n"   # medium
        "BraTS20_Training_006,70,456,GTR\n"   # 456 <= 456.6 days (15 months): medium
        "BraTS20_Training_007,70,457,GTR\n"   # long
        "BraTS20_Training_008,41,ALIVE (500 days later),GTR\n")  # censored beyond 15 months: long
    s = brats.read_survival(tmp_path)
    assert s["BraTS20_Training_001"] == {"age": 60.463, "survival_days": 289.0, "censored": False,
                                         "survival_class": 0, "extent_of_resection": "GTR"}
    assert s["BraTS20_Training_002"]["survival_days"] == 361.0 and s["BraTS20_Training_002"]["censored"]
    assert s["BraTS20_Training_002"]["survival_class"] == -1  # alive at 361 days: medium or long, unknown
    assert s["BraTS20_Training_003"]["age"] is None and s["BraTS20_Training_003"]["survival_days"] is None
    classes = [s[f"BraTS20_Training_{i:03d}"]["survival_class"] for i in range(3, 9)]
    assert classes == [-1, 0, 1, 1, 2, 2]


def test_read_survival_bad_value_names_file(tmp_path):
    (tmp_path / "survival_info.csv").write_text("Brats20ID,Age,Survival_days\nBraTS20_Training_001,old,12\n")
    with pytest.raises(DataError, match=r"survival_info.csv: row 2: Age"):
        brats.read_survival(tmp_path)


def _write_fixations(path, rows, header="reader_id,expertise,slice_axis,slice_index,x,y,start_s,duration_s"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_read_fixations_axes_and_readers(tmp_path):
    path = _write_fixations(tmp_path / f"{CASE}_fixations.csv", [
        "R1,expert,2,5,3,4,0.5,0.2",        # axial slice 5 -> (3, 4, 5)
        "R1,expert,axial,6,3.5,4,0.8,0.3",
        "N1,non_expert,1,5,3,4,1.0,0.1",    # coronal: axis 1 -> (3, 5, 4)
        "N2,non_expert,sagittal,5,3,4,1.2,0.4"])  # axis 0 -> (5, 3, 4)
    assert brats.gaze_path(tmp_path, CASE) == str(path)
    assert brats.gaze_path(tmp_path, "BraTS20_Training_002") is None and brats.gaze_path(None, CASE) is None
    fix = brats.read_fixations(path)
    np.testing.assert_array_equal(fix.points, [[3, 4, 5], [3.5, 4, 6], [3, 5, 4], [5, 3, 4]])
    np.testing.assert_array_equal(fix.slice_axis, [2, 2, 1, 0])
    np.testing.assert_array_equal(fix.duration_s, [0.2, 0.3, 0.1, 0.4])
    experts = brats.select_readers(fix, "expert")
    assert len(experts) == 2 and list(experts.reader_id) == ["R1", "R1"]
    np.testing.assert_array_equal(experts.start_s, [0.5, 0.8])
    assert list(brats.select_readers(fix, "non_expert").reader_id) == ["N1", "N2"]
    assert len(brats.select_readers(fix, "all")) == 4
    with pytest.raises(ValueError):
        brats.select_readers(fix, "novice")


@pytest.mark.parametrize("header, row, problem", [
    ("reader_id,expertise,slice_axis,slice_index,x,y,start_s", "R1,expert,2,5,3,4,0.5", "missing columns"),
    (None, "R1,expert,2,5,three,4,0.5,0.2", "row 2: slice_index, x or y is not a finite number"),
    (None, "R1,radiologist,2,5,3,4,0.5,0.2", "unknown expertise"),
    (None, "R1,expert,oblique,5,3,4,0.5,0.2", "unknown slice_axis"),
])
def test_bad_fixations_csv(tmp_path, header, row, problem):
    kwargs = {"header": header} if header else {}
    path = _write_fixations(tmp_path / f"{CASE}_fixations.csv", [row], **kwargs)
    with pytest.raises(DataError) as err:
        brats.read_fixations(path)
    assert f"{CASE}_fixations.csv" in str(err.value) and problem in str(err.value)
