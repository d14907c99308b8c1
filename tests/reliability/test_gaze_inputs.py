"""Fault injection for gaze inputs (BraTS fixation CSVs): partially bad rows are dropped with one warning per file
(count and first bad row), a file with no usable fixation is a one-line error naming it, and a case counts as
"with gaze" only when its rendered map is non-zero. Reading never alters the file."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from gazejax.data.brats import reader as brats
from gazejax.data.brats import records
from gazejax.data.errors import DataError

HEADER = "reader_id,expertise,slice_axis,slice_index,x,y,start_s,duration_s"
GOOD = "R1,expert,2,5,3,4,0.5,0.2"
SHAPE = (10, 12, 8)


def _write(tmp_path, rows) -> str:
    path = tmp_path / "BraTS20_Training_001_fixations.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return str(path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


BAD_ROWS = [
    ("R1,expert,2,5,nan,4,0.6,0.2", "slice_index, x or y is not a finite number"),
    ("R1,expert,2,5,3,4,0.6,0", "duration_s is not > 0"),
    ("R1,expert,2,5,3,4,0.6,-0.1", "duration_s is not > 0"),
    ("R1,expert,2,9,3,4,0.6,0.2", "point outside the volume of shape (10, 12, 8)"),  # slice past the depth
    ("R1,expert,2,5,30,4,0.6,0.2", "point outside the volume"),
    ("R1,expert,2,5,-3,4,0.6,0.2", "point outside the volume"),
    ("R1,expert,2,5,3,4,inf,0.2", "start_s is not a finite number"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS, ids=[r[1][:24] + str(i) for i, r in enumerate(BAD_ROWS)])
def test_partially_bad_rows_are_dropped_with_one_warning(tmp_path, caplog, row, reason):
    path = _write(tmp_path, [GOOD, row, row, GOOD])
    before = _digest(path)
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        fix = brats.read_fixations(path, shape=SHAPE)
    assert len(fix) == 2 and np.all(fix.duration_s > 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{path}: dropped 2 of 4 fixations (first: row 3: {reason}" in warnings[0]
    assert _digest(path) == before


@pytest.mark.parametrize("row,reason", BAD_ROWS, ids=[r[1][:24] + str(i) for i, r in enumerate(BAD_ROWS)])
def test_a_file_without_usable_fixations_is_an_error(tmp_path, row, reason):
    path = _write(tmp_path, [row, row])
    with pytest.raises(DataError) as info:
        brats.read_fixations(path, shape=SHAPE)
    message = str(info.value)
    assert "\n" not in message and message.startswith(path) and "no usable fixation: all 2 rows are bad" in message
    assert reason in message


def test_an_empty_fixation_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no fixation rows"):
        brats.read_fixations(_write(tmp_path, []))


def test_has_gaze_means_a_non_zero_map():
    meta = {"bbox": [[0, 10], [0, 12], [0, 8]], "shape": [10, 12, 8], "affine": np.eye(4).tolist(),
            "spacing": [1.0, 1.0, 1.0], "has_seg": True, "crop_shape": [10, 12, 8]}
    none = records.make_record("c", meta, None, "expert", 2.0, -1, "/nonexistent")
    assert not none.has_gaze
    fix = brats.Fixations(reader_id=np.array(["N1"]), expertise=np.array(["non_expert"]),
                          points=np.array([[3.0, 4.0, 5.0]]), start_s=np.zeros(1), duration_s=np.ones(1),
                          slice_axis=np.array([2], np.int8))
    experts_only = records.make_record("c", meta, fix, "expert", 2.0, -1, "/nonexistent")
    assert not experts_only.has_gaze  # a file exists, but no expert fixation: no gaze for this run
    with_gaze = records.make_record("c", meta, fix, "all", 2.0, -1, "/nonexistent")
    assert with_gaze.has_gaze and with_gaze.gaze_norm > 0
