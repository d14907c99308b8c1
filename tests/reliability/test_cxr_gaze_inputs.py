"""Fault injection for chest X-ray gaze files (EGD-CXR fixations.csv, REFLACX per-reading fixations.csv) and an
undecodable CSV: bad rows are dropped with one warning giving the count and first bad row (per file for EGD-CXR's one
file, per data set for REFLACX's one file per reading), a file with no usable fixation is a one-line error naming
it, and nothing on disk is altered."""
from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import shutil

import numpy as np
import pytest

from gazejax.data.cxr.egd_cxr import EGDCXR
from gazejax.data.cxr.reflacx import REFLACX
from gazejax.data.errors import DataError
from gazejax.data.synthetic.cxr import generate_egd_cxr, generate_reflacx

SIZE = (80, 64)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("cxr_faults")
    return {"egd": generate_egd_cxr(str(base), images=6, seed=2, size=SIZE),
            "reflacx": generate_reflacx(str(base), images=6, seed=2, size=SIZE)}


def _copy(pristine, kind, tmp_path):
    root, mimic = pristine[kind]
    new_root = shutil.copytree(root, tmp_path / os.path.basename(root))
    return str(new_root), mimic


def _edit_rows(path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    body = edit(header, body)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("column,value,reason", [("FPOGX", "nan", "coordinates are not finite numbers"),
                                                 ("FPOGD", "0", "duration is not > 0"),
                                                 ("FPOGD", "-0.2", "duration is not > 0")])
def test_egd_bad_rows_dropped_with_one_warning(pristine, tmp_path, caplog, column, value, reason):
    root, mimic = _copy(pristine, "egd", tmp_path)
    path = os.path.join(root, "fixations.csv")
    clean = {r.dicom_id: len(r.fixations) for r in EGDCXR(root, mimic).records()}

    def spoil(header, body):
        for row in body[3:5]:
            row[header.index(column)] = value
        return body

    _edit_rows(path, spoil)
    before = _digest(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        records = EGDCXR(root, mimic).records()
    messages = [m for m in _warnings(caplog) if m.startswith(path)]
    assert len(messages) == 1 and "dropped" in messages[0] and reason in messages[0], _warnings(caplog)
    assert sum(len(r.fixations) for r in records) <= sum(clean.values()) - 2  # the two spoiled rows are gone
    assert all(np.all(r.fixations.durations > 0) and np.isfinite(r.fixations.points).all() for r in records)
    assert _digest(path) == before


def test_egd_file_without_usable_fixations_is_an_error(pristine, tmp_path):
    root, mimic = _copy(pristine, "egd", tmp_path)
    path = os.path.join(root, "fixations.csv")

    def spoil(header, body):
        for row in body:
            row[header.index("FPOGD")] = "0"
        return body

    _edit_rows(path, spoil)
    with pytest.raises(DataError) as info:
        EGDCXR(root, mimic).records()
    message = str(info.value)
    assert "\n" not in message and message.startswith(path) and "no usable fixation" in message
    assert "duration is not > 0" in message


def _reading_file(root) -> str:
    return sorted(glob.glob(os.path.join(root, "main_data", "*", "fixations.csv")))[0]


def _fixation_count(root, mimic, outside) -> int:
    return sum(len(r.fixations) for r in REFLACX(root, mimic, group_by="reading", outside=outside).records())


def test_reflacx_drops_are_one_warning_for_the_data_set(pristine, tmp_path, caplog):
    """One warning for all ~3,000 reading files, not one per file, with counts that add up (the synthetic set has
    gaze outside the shown region in every reading, as the real one has gaze on the interface)."""
    root, mimic = _copy(pristine, "reflacx", tmp_path)
    readings = len(REFLACX(root, mimic, group_by="reading", outside="keep").records())
    total = _fixation_count(root, mimic, "keep")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        kept = _fixation_count(root, mimic, "drop")
    messages = _warnings(caplog)
    outside = total - kept
    assert readings > 1 and outside > 0
    assert messages == [f"{os.path.join(root, 'main_data')}: dropped {outside} of {total} fixations in {readings} of "
                        f"{readings} fixation files (outside the image region shown: {outside}; first: "
                        + messages[0].split("; first: ")[1]], messages
    assert "/fixations.csv row " in messages[0]

    path = _reading_file(root)

    def spoil_two(header, body):
        body[0][header.index("x_position")] = "nan"
        body[1][header.index("timestamp_end_fixation")] = body[1][header.index("timestamp_start_fixation")]
        return body

    _edit_rows(path, spoil_two)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        assert _fixation_count(root, mimic, "drop") == kept - 2
    messages = _warnings(caplog)
    assert len(messages) == 1 and f"dropped {outside + 2} of {total} fixations" in messages[0], messages
    assert "x_position or y_position is not a finite number: 1" in messages[0]
    assert "fixation duration (end - start) is not > 0: 1" in messages[0]


def test_reflacx_file_without_usable_fixations_is_an_error(pristine, tmp_path):
    root, mimic = _copy(pristine, "reflacx", tmp_path)
    path = _reading_file(root)

    def spoil_all(header, body):
        for row in body:
            row[header.index("x_position")] = ""
        return body

    _edit_rows(path, spoil_all)
    before = _digest(path)
    with pytest.raises(DataError) as info:
        REFLACX(root, mimic).records()
    assert str(info.value).startswith(path) and "no usable fixation" in str(info.value)
    assert _digest(path) == before


def test_undecodable_csv_is_one_line(pristine, tmp_path):
    root, mimic = _copy(pristine, "egd", tmp_path)
    path = os.path.join(root, "master_sheet.csv")
    with open(path, "ab") as f:
        f.write(b"\xff\xfe\xfa broken bytes\n")
    with pytest.raises(DataError) as info:
        EGDCXR(root, mimic).records()
    assert "\n" not in str(info.value) and str(info.value).startswith(path) and "not a UTF-8 text CSV" in str(
        info.value)


def _no_gaze(pristine, kind, tmp_path):
    """A copy of the data set whose gaze files hold no fixation (header only): a wrong or empty export."""
    root, mimic = _copy(pristine, kind, tmp_path)
    paths = ([os.path.join(root, f) for f in ("fixations.csv", "eye_gaze.csv")] if kind == "egd"
             else glob.glob(os.path.join(root, "main_data", "*", "fixations.csv")))
    for path in paths:
        _edit_rows(path, lambda header, body: [])
    return root, mimic


def _cxr_config(family, method, root, mimic, tmp_path):
    import importlib

    c = importlib.import_module(f"configs.{family}").get_config(f"method={method}")
    c.data.root, c.data.mimic_root, c.data.cache_dir = root, mimic, str(tmp_path / "cache")
    return c


@pytest.mark.parametrize("family,gaze_method,free_method,kind", [
    ("ggcam", "ggcam", "plain", "egd"), ("cxr_san", "ours", "backbone", "egd"),
    ("cxrgazelearn", "mt_unet", "dnet201", "egd"), ("gazat", "gazat", "simclr", "reflacx"),
    ("gazat", "mcgip", "moco", "reflacx")])
def test_a_cxr_gaze_method_without_any_training_gaze_names_where_it_searched(pristine, tmp_path, family,
                                                                            gaze_method, free_method, kind):
    import importlib

    spec = importlib.import_module(f"gazejax.methods.{family}")
    root, mimic = _no_gaze(pristine, kind, tmp_path)
    c = _cxr_config(family, gaze_method, root, mimic, tmp_path)
    if kind == "reflacx" and c.data.dataset != "reflacx":
        pytest.skip(f"{family} reads EGD-CXR")
    with pytest.raises(DataError) as info:
        spec.METHOD.make_data(c)
    message = str(info.value)
    assert "\n" not in message and root in message and repr(gaze_method) in message, message
    assert spec.METHOD.make_data(_cxr_config(family, free_method, root, mimic, tmp_path)).num_train > 0
