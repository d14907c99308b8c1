"""Reader for the BraTS 2020 layout on disk (NIfTI volumes, survival table) and gazejax's BraTS fixation CSVs.

Every malformed input raises `DataError` with one line naming the case/file and the problem; nothing is repaired
silently.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
import zlib

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from gazejax.data.errors import DataError

log = logging.getLogger("gazejax")

MODALITIES = ("flair", "t1", "t1ce", "t2")
LABELS = (0, 1, 2, 4)  # background, NCR/NET, edema, enhancing tumour
AFFINE_ATOL = 1e-3
DAYS_PER_MONTH = 30.44
SHORT_MAX_DAYS = 10 * DAYS_PER_MONTH  # 304.4 days: short survivors have strictly fewer days
LONG_MIN_DAYS = 15 * DAYS_PER_MONTH  # 456.6 days: long survivors have strictly more days
EXPERTISE = ("expert", "non_expert")
FIXATION_COLUMNS = ("reader_id", "expertise", "slice_axis", "slice_index", "x", "y", "start_s", "duration_s")
_AXIS_NAMES = {"0": 0, "1": 1, "2": 2, "sagittal": 0, "coronal": 1, "axial": 2}
_NIFTI_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError)


# ----------------------------------------------------------------------------------------------------- NIfTI volumes
def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Loads a NIfTI file (`.nii` or `.nii.gz`) as (array in its stored dtype, affine float64 [4, 4], voxel zooms).

    The array keeps the file's dtype unless the header asks for scaling (then nibabel returns floats). Truncated or
    corrupt files raise DataError naming the file instead of nibabel's/zlib's own exceptions.
    """
    path = os.fspath(path)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except _NIFTI_ERRORS as e:
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
    return np.asarray(data), affine, zooms


def _nifti_stem(name: str) -> str | None:
    """'X_flair.nii.gz' -> 'X_flair'; None for names that are not NIfTI files."""
    match = re.fullmatch(r"(.+)\.nii(\.gz)?", name, flags=re.IGNORECASE)
    return match.group(1) if match else None


def _canonical(case_dir: str, case_id: str, kind: str) -> str | None:
    found = [p for p in (os.path.join(case_dir, f"{case_id}_{kind}{suffix}") for suffix in (".nii.gz", ".nii"))
             if os.path.isfile(p)]
    if len(found) > 1:  # which one is current? Refuse rather than pick one silently
        raise DataError(f"{case_id}: both {os.path.basename(found[0])} and {os.path.basename(found[1])} in "
                        f"{case_dir}; keep one")
    return found[0] if found else None


def _find_modality(case_dir: str, case_id: str, modality: str) -> str:
    path = _canonical(case_dir, case_id, modality)
    if path:
        return path
    hits = sorted(n for n in os.listdir(case_dir) if (_nifti_stem(n) or "").lower().endswith("_" + modality))
    if len(hits) == 1:
        owner = _nifti_stem(hits[0])[: -len(modality) - 1]
        if owner.lower() != case_id.lower():  # a renamed folder, or another case's file copied in
            raise DataError(f"{case_id}: {hits[0]} in {case_dir} belongs to case {owner!r}, not to the folder's "
                            f"case {case_id!r}; folder and file names must carry the same case id")
        return os.path.join(case_dir, hits[0])
    if not hits:
        raise DataError(f"{case_id}: missing {modality} image {case_id}_{modality}.nii[.gz] in {case_dir}")
    raise DataError(f"{case_id}: several {modality} images in {case_dir}: {', '.join(hits)}")


def _find_seg(case_dir: str, case_id: str) -> str | None:
    """The canonical seg file, else the single NIfTI whose name contains 'seg' (case 355: '..._Segm.nii')."""
    path = _canonical(case_dir, case_id, "seg")
    if path:
        return path
    hits = []
    for name in sorted(os.listdir(case_dir)):
        stem = (_nifti_stem(name) or "").lower()
        if "seg" in stem and not any(stem.endswith("_" + m) for m in MODALITIES):
            hits.append(name)
    if len(hits) > 1:
        raise DataError(f"{case_id}: several segmentation files in {case_dir}: {', '.join(hits)}")
    return os.path.join(case_dir, hits[0]) if hits else None


def _load_volume(path: str, case_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    data, affine, zooms = load_nifti(path)
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])  # some writers store 3D volumes as [X, Y, Z, 1]
    if data.ndim != 3:
        raise DataError(f"{case_id}: {os.path.basename(path)} has shape {data.shape}, expected a 3D volume")
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(f"{case_id}: {os.path.basename(path)} has {bad} NaN/Inf voxels")
    return data, affine, zooms[:3]


def _check_geometry(case_id: str, path: str, shape, affine, ref_shape, ref_affine, ref_name: str) -> None:
    name = os.path.basename(path)
    if tuple(shape) != tuple(ref_shape):
        raise DataError(f"{case_id}: {name} has shape {tuple(shape)} but {ref_name} has {tuple(ref_shape)}")
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL, rtol=0.0):
        diff = float(np.max(np.abs(affine - ref_affine)))
        raise DataError(f"{case_id}: {name} affine differs from {ref_name} (max abs difference {diff:.4g})")


def _labels_uint8(seg: np.ndarray, case_id: str, name: str) -> np.ndarray:
    """Checks a label volume (possibly stored as float) holds only {0, 1, 2, 4} and returns it as uint8."""
    if seg.dtype.kind == "f" and not np.array_equal(seg, np.round(seg)):
        raise DataError(f"{case_id}: {name} has non-integer label values")
    values = np.unique(seg)
    bad = np.setdiff1d(values, LABELS)
    if bad.size:
        shown = ", ".join(str(v) for v in (bad.astype(np.int64) if seg.dtype.kind == "f" else bad)[:10])
        raise DataError(f"{case_id}: {name} has labels outside {{0, 1, 2, 4}}: {shown}")
    return seg.astype(np.uint8)


def is_case_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding a `*_flair.nii[.gz]` file (a BraTS case)."""
    path = os.fspath(path)
    return os.path.isdir(path) and any((_nifti_stem(n) or "").lower().endswith("_flair") for n in os.listdir(path))


def list_cases(root: str | os.PathLike) -> list[str]:
    """Sorted paths of the case directories under `root` (those holding a `*_flair.nii[.gz]` file)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: BraTS root directory does not exist")
    cases = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if is_case_folder(path):
            cases.append(path)
    if not cases:
        raise DataError(f"{root}: no BraTS cases (directories holding a *_flair.nii[.gz] file)")
    return cases


def case_files(case_dir: str | os.PathLike) -> tuple[str, dict[str, str], str | None]:
    """(case_id, {modality: path}, segmentation path or None) of a BraTS case folder."""
    case_dir = os.path.normpath(os.fspath(case_dir))
    case_id = os.path.basename(case_dir)
    if not os.path.isdir(case_dir):
        raise DataError(f"{case_id}: case directory {case_dir} does not exist")
    return case_id, {m: _find_modality(case_dir, case_id, m) for m in MODALITIES}, _find_seg(case_dir, case_id)


def read_case(case_dir: str | os.PathLike) -> dict:
    """Reads one case: {"image": float32 [X, Y, Z, 4] (flair, t1, t1ce, t2), "seg": uint8 [X, Y, Z] or None,
    "affine": float64 [4, 4], "case_id": str, "spacing": (sx, sy, sz) in mm}.

    Labels are the BraTS ones: 0 background, 1 NCR/NET, 2 edema, 4 enhancing. `seg` is None when the folder has no
    segmentation (validation data). All volumes must share shape and affine (atol 1e-3).
    """
    return read_volumes(*case_files(case_dir))


def read_volumes(case_id: str, paths: dict[str, str], seg_path: str | None = None) -> dict:
    """`read_case` of explicitly named files: `paths` maps each of MODALITIES to a NIfTI file."""
    missing = [m for m in MODALITIES if not paths.get(m)]
    if missing:
        raise DataError(f"{case_id}: no {', '.join(missing)} image given (need {', '.join(MODALITIES)})")
    volumes, ref = [], None
    for modality in MODALITIES:
        path = paths[modality]
        data, affine, zooms = _load_volume(path, case_id)
        if ref is None:
            ref = (data.shape, affine, zooms, os.path.basename(path))
        else:
            _check_geometry(case_id, path, data.shape, affine, ref[0], ref[1], ref[3])
        if not np.any(data):  # an empty brain cannot be cropped or normalised
            raise DataError(f"{case_id}: {os.path.basename(path)} is all zero (an empty {modality} volume)")
        volumes.append(data.astype(np.float32, copy=False))
    seg = None
    if seg_path:
        seg = read_seg(seg_path, case_id, ref[0], ref[1], ref[3])
    return {"image": np.stack(volumes, axis=-1), "seg": seg, "affine": ref[1], "case_id": case_id,
            "spacing": tuple(ref[2])}


def read_seg(path: str, case_id: str, shape: tuple, affine: np.ndarray, ref_name: str) -> np.ndarray:
    """A segmentation file as uint8 BraTS labels, checked against the case's shape and affine."""
    data, seg_affine, _ = _load_volume(path, case_id)
    _check_geometry(case_id, path, data.shape, seg_affine, shape, affine, ref_name)
    return _labels_uint8(data, case_id, os.path.basename(path))


def find_seg(case_dir: str, case_id: str) -> str | None:
    """The segmentation file of a case folder (`<case_id>_seg.nii[.gz]`, else the one NIfTI named like 'seg')."""
    return _find_seg(case_dir, case_id)


# ------------------------------------------------------------------------------------------------------ survival
def _first_column(fieldnames, *names) -> str | None:
    lowered = {f.strip().lower(): f for f in fieldnames or ()}
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def _optional_float(text: str, path: str, row: int, column: str) -> float | None:
    text = (text or "").strip()
    if text == "" or text.upper() in ("NA", "N/A", "NAN"):
        return None
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: row {row}: {column} is not a number: {text!r}") from None


def parse_survival_days(text: str, path: str = "survival_info.csv", row: int = 0) -> tuple[float | None, bool]:
    """'289' -> (289.0, False); 'ALIVE (361 days later)' -> (361.0, True) (censored); '' -> (None, False)."""
    stripped = (text or "").strip()
    match = re.fullmatch(r"alive\s*\(\s*(\d+(?:\.\d+)?)\s*days?\s*later\s*\)", stripped, flags=re.IGNORECASE)
    if match:
        return float(match.group(1)), True
    return _optional_float(stripped, path, row, "Survival_days"), False


def survival_class(days: float | None, censored: bool = False) -> int:
    """BraTS survival class: 0 short (< 10 months = 304.4 days), 1 medium (304.4-456.6 days), 2 long (> 15 months
    = 456.6 days), with 1 month = 30.44 days; -1 when unknown. A censored time (patient alive at `days`) only fixes
    the class when it is already beyond the long cut-off."""
    if days is None or (censored and days <= LONG_MIN_DAYS):
        return -1
    if days < SHORT_MAX_DAYS:
        return 0
    return 2 if days > LONG_MIN_DAYS else 1


def read_survival(root: str | os.PathLike) -> dict[str, dict]:
    """Reads `root/survival_info.csv` (or the validation `survival_evaluation.csv`) into
    {case_id: {"age", "survival_days", "censored", "survival_class", "extent_of_resection"}}; {} without a file.

    Columns Brats20ID, Age, Survival_days, Extent_of_Resection (validation: BraTS20ID, Age, ResectionStatus).
    Empty or NA values become None (age, days), -1 (class) or "" (resection). See `survival_class` for cut-offs.
    """
    root = os.fspath(root)
    path = next((p for p in (os.path.join(root, n) for n in ("survival_info.csv", "survival_evaluation.csv"))
                 if os.path.isfile(p)), None)
    if path is None:
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        id_col = _first_column(reader.fieldnames, "Brats20ID", "BraTS20ID", "BraTS_2020_subject_ID")
        age_col = _first_column(reader.fieldnames, "Age")
        days_col = _first_column(reader.fieldnames, "Survival_days", "Survival")
        eor_col = _first_column(reader.fieldnames, "Extent_of_Resection", "ResectionStatus")
        if id_col is None:
            raise DataError(f"{path}: missing column Brats20ID (found {reader.fieldnames})")
        out = {}
        for row, record in enumerate(reader, start=2):  # row numbers as in a spreadsheet (header is row 1)
            case_id = (record.get(id_col) or "").strip()
            if not case_id:
                continue
            days, censored = parse_survival_days(record.get(days_col, "") if days_col else "", path, row)
            age = _optional_float(record.get(age_col, "") if age_col else "", path, row, "Age")
            for name, value, top in (("Survival_days", days, 36500.0), ("Age", age, 130.0)):
                if value is not None and not 0.0 <= value <= top:
                    raise DataError(f"{path}: row {row} ({case_id}): implausible {name} {value:g} "
                                    f"(expected 0 to {top:g})")
            out[case_id] = {
                "age": age,
                "survival_days": days, "censored": censored, "survival_class": survival_class(days, censored),
                "extent_of_resection": (record.get(eor_col) or "").strip() if eor_col else ""}
    return out


# ---------------------------------------------------------------------------------------------------------- gaze
@dataclasses.dataclass(frozen=True, eq=False)
class Fixations:
    """Fixations of one case: N rows. `points` [N, 3] float64 are voxel coordinates in array index order (i, j, k);
    `slice_axis` [N] int8 is the array axis of the viewed slice; `start_s`, `duration_s` [N] float64 seconds."""

    reader_id: np.ndarray
    expertise: np.ndarray
    points: np.ndarray
    start_s: np.ndarray
    duration_s: np.ndarray
    slice_axis: np.ndarray

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def take(self, index: np.ndarray) -> "Fixations":
        """The rows selected by a boolean mask or an index array."""
        return Fixations(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def gaze_path(gaze_dir: str | os.PathLike | None, case_id: str) -> str | None:
    """`<gaze_dir>/<case_id>_fixations.csv` if it exists, else None (cases without gaze)."""
    if gaze_dir is None:
        return None
    path = os.path.join(os.fspath(gaze_dir), f"{case_id}_fixations.csv")
    return path if os.path.isfile(path) else None


def _float_column(rows: list[dict], column: str, path: str) -> np.ndarray:
    """The column as float64; text that is not a number becomes NaN (a bad row, see `read_fixations`)."""
    values = np.full(len(rows), np.nan)
    for n, row in enumerate(rows):
        try:
            values[n] = float((row[column] or "").strip())
        except ValueError:
            pass
    return values


def _first_bad_rows(checks: list[tuple[np.ndarray, str]], n: int) -> tuple[np.ndarray, str]:
    """(bool [n] rows that fail any check, "row R: reason" of the first of them) for (ok mask, reason) checks."""
    bad = np.zeros(n, bool)
    for ok, _ in checks:
        bad |= ~ok
    if not bad.any():
        return bad, ""
    first = int(np.argmax(bad))
    reason = next(r for ok, r in checks if not ok[first])
    return bad, f"row {first + 2}: {reason}"


def _text_column(rows: list[dict], column: str, path: str, allowed: dict | None = None) -> list:
    values = [(row[column] or "").strip() for row in rows]
    if allowed is None:
        return values
    for n, value in enumerate(values):
        if value.lower() not in allowed:
            raise DataError(f"{path}: row {n + 2}: unknown {column} {value!r} (expected one of "
                            f"{', '.join(sorted(set(map(str, allowed.values()))))})")
    return [allowed[v.lower()] for v in values]


def read_fixations(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> Fixations:
    """Reads `<case_id>_fixations.csv` (columns reader_id, expertise, slice_axis, slice_index, x, y, start_s,
    duration_s). Axial slice k of axis 2 with (x, y) gives point (x, y, k): x indexes the lower remaining array axis,
    y the higher one. slice_axis is 0/1/2 or sagittal/coronal/axial; expertise is expert or non_expert.

    Rows with a coordinate or start that is not a finite number, a duration that is not > 0, or (given the volume's
    `shape`) a point outside the volume (slice index past the depth included) are dropped with one warning per file
    (count and first bad row); a file left with no usable fixation is a DataError naming it and the first reason.
    """
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fieldnames = [c.strip() for c in reader.fieldnames or ()]
            rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: unreadable fixations CSV ({type(e).__name__}: {e})") from e
    missing = [c for c in FIXATION_COLUMNS if c not in fieldnames]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}")
    if not rows:
        raise DataError(f"{path}: no fixation rows (a case without gaze has no fixations file)")
    expertise_names = {e: e for e in EXPERTISE} | {"non-expert": "non_expert", "nonexpert": "non_expert"}
    axis = np.asarray(_text_column(rows, "slice_axis", path, _AXIS_NAMES), dtype=np.int8)
    slice_index, x, y = (_float_column(rows, c, path) for c in ("slice_index", "x", "y"))
    # The two in-slice axes in increasing order: axis 0 -> (1, 2), axis 1 -> (0, 2), axis 2 -> (0, 1).
    low = np.where(axis == 0, 1, 0)
    high = np.where(axis == 2, 1, 2)
    points = np.zeros((len(rows), 3), dtype=np.float64)
    rows_idx = np.arange(len(rows))
    points[rows_idx, axis] = slice_index
    points[rows_idx, low] = x
    points[rows_idx, high] = y
    duration, start = _float_column(rows, "duration_s", path), _float_column(rows, "start_s", path)
    checks = [(np.isfinite(points).all(axis=1), "slice_index, x or y is not a finite number"),
              (np.isfinite(start), "start_s is not a finite number"),
              (np.isfinite(duration) & (duration > 0), "duration_s is not > 0")]
    if shape is not None:  # voxel indices: voxel i covers [i - 0.5, i + 0.5)
        inside = ((points >= -0.5) & (points < np.asarray(shape[:3], np.float64) - 0.5)).all(axis=1)
        checks.append((inside | ~checks[0][0], f"point outside the volume of shape {tuple(shape[:3])}"))
    bad, first = _first_bad_rows(checks, len(rows))
    if bad.all():
        raise DataError(f"{path}: no usable fixation: all {len(rows)} rows are bad (first: {first})")
    if bad.any():
        log.warning("%s: dropped %d of %d fixations (first: %s)", path, int(bad.sum()), len(rows), first)
    fix = Fixations(reader_id=np.asarray(_text_column(rows, "reader_id", path), dtype=str),
                    expertise=np.asarray(_text_column(rows, "expertise", path, expertise_names), dtype=str),
                    points=points, start_s=start, duration_s=duration, slice_axis=axis)
    return fix.take(~bad)


def select_readers(fixations: Fixations, expertise: str = "expert") -> Fixations:
    """The fixations of "expert" or "non_expert" readers, or all of them ("all")."""
    if expertise == "all":
        return fixations
    if expertise not in EXPERTISE:
        raise ValueError(f"expertise must be one of expert, non_expert, all; got {expertise!r}")
    return fixations.take(fixations.expertise == expertise)
