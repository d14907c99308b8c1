"""Fault injection for the BraTS reader: case identity (renamed folders, another case's file, .nii next to .nii.gz),
empty volumes and implausible survival rows give one DataError line naming the case/file/row, and reading never
alters what is on disk."""
from __future__ import annotations

import hashlib
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from gazejax.data.brats import reader as brats
from gazejax.data.errors import DataError
from gazejax.data.synthetic import brats as synth

CASE, OTHER = "BraTS20_Training_001", "BraTS20_Training_002"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("brats_faults") / "set"
    return synth.generate(str(out), cases=2, seed=7, shape=(20, 24, 16), gaze_share=1.0)


@pytest.fixture()
def root(pristine, tmp_path) -> str:
    return shutil.copytree(pristine, tmp_path / "set")


def _tree_digest(folder) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _expect(call, *words) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def _read_unchanged(root, case_dir, *words) -> None:
    before = _tree_digest(root)
    _expect(lambda: brats.read_case(case_dir), *words)
    assert _tree_digest(root) == before


def test_renamed_folder_names_the_case_its_files_carry(root):
    renamed = os.path.join(root, "patient_a")
    os.rename(os.path.join(root, CASE), renamed)
    _read_unchanged(root, renamed, "patient_a", f"belongs to case {CASE!r}")


def test_another_cases_file_in_the_folder_is_refused(root):
    case_dir = os.path.join(root, CASE)
    os.remove(os.path.join(case_dir, f"{CASE}_t1.nii.gz"))
    shutil.copy(os.path.join(root, OTHER, f"{OTHER}_t1.nii.gz"), case_dir)
    _read_unchanged(root, case_dir, CASE, f"{OTHER}_t1.nii.gz", f"belongs to case {OTHER!r}")


def test_nii_next_to_nii_gz_is_refused(root):
    case_dir = os.path.join(root, CASE)
    img = nib.load(os.path.join(case_dir, f"{CASE}_flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), os.path.join(case_dir, f"{CASE}_flair.nii"))
    _read_unchanged(root, case_dir, CASE, f"both {CASE}_flair.nii.gz and {CASE}_flair.nii", "keep one")


@pytest.mark.parametrize("modalities", [("t1ce",), brats.MODALITIES], ids=["one_modality", "whole_case"])
def test_all_zero_volumes_are_refused(root, modalities):
    case_dir = os.path.join(root, CASE)
    for m in modalities:
        path = os.path.join(case_dir, f"{CASE}_{m}.nii.gz")
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine), path)
    _read_unchanged(root, case_dir, CASE, f"{CASE}_{modalities[0]}.nii.gz is all zero")


@pytest.mark.parametrize("column,value", [("Survival_days", "-5"), ("Age", "-1"), ("Age", "212"),
                                          ("Survival_days", "inf")])
def test_implausible_survival_rows_are_errors(root, column, value):
    path = os.path.join(root, "survival_info.csv")
    lines = open(path).read().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index(column)] = value
    lines[1] = ",".join(row)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    before = _tree_digest(root)
    _expect(lambda: brats.read_survival(root), "survival_info.csv: row 2", f"implausible {column}")
    assert _tree_digest(root) == before


def test_identical_volumes_under_two_ids_are_reported(root, tmp_path, caplog):
    import logging

    from gazejax.data.brats import records

    copy_id = "BraTS20_Training_003"
    target = os.path.join(root, copy_id)
    os.makedirs(target)
    for name in os.listdir(os.path.join(root, CASE)):
        shutil.copy(os.path.join(root, CASE, name), os.path.join(target, name.replace(CASE, copy_id)))
    cache = str(tmp_path / "cache")
    recs = [records.prepare_case(c, cache, None, "expert", 2.0, {}) for c in brats.list_cases(root)]
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        groups = records.report_duplicates(recs)
    assert groups == [[CASE, copy_id]]
    assert any(CASE in r.getMessage() and copy_id in r.getMessage() for r in caplog.records)


def test_a_gaze_method_without_any_gaze_names_the_folder(tiny_brats_root, tmp_path):
    from gazejax.methods.san_aab import spec
    from tests.conftest import tiny_brats_config

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"))
    cfg.data.gaze_dir = str(tmp_path / "gaze_typo")
    with pytest.raises(FileNotFoundError, match="data.gaze_dir .*gaze_typo.*: no such directory"):
        spec.make_data(cfg)
    empty = tmp_path / "empty_gaze"
    empty.mkdir()
    cfg.data.gaze_dir = str(empty)
    message = f"method 'ours' trains on gaze, but no training case has any .searched {empty}"
    with pytest.raises(ValueError, match=message):
        spec.make_data(cfg)
    cfg.method = "backbone"  # needs no gaze: the same folder is fine
    assert spec.make_data(cfg).num_train > 0


def test_a_training_case_without_a_segmentation_is_an_error_or_a_listed_skip(tiny_brats_root, tmp_path, caplog):
    import logging

    from gazejax.methods.san_aab import spec
    from tests.conftest import tiny_brats_config

    root = shutil.copytree(tiny_brats_root, tmp_path / "set")
    case = sorted(c for c in os.listdir(root) if c.startswith("BraTS20_Training_"))[2]
    os.remove(os.path.join(root, case, f"{case}_seg.nii.gz"))
    before = _tree_digest(root)
    cfg = tiny_brats_config(str(root), str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        spec.make_data(cfg)
    message = str(info.value)
    assert "\n" not in message and str(root) in message and case in message and "skip_incomplete" in message
    cfg.data.skip_incomplete = True
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        bundle = spec.make_data(cfg)
    assert any("skip_incomplete" in r.getMessage() and case in r.getMessage() for r in caplog.records)
    used = {r.case_id for r in [*bundle.train, *bundle.splits["val"], *bundle.splits["test"]]}
    assert case not in used and len(used) == 7  # the 7 complete cases of 8, none lost
    assert _tree_digest(root) == before
