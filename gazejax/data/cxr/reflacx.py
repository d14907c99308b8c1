"""Reader for REFLACX (Bigolin Lanfredi et al. 2022, PhysioNet reflacx-xray-localization 1.0.0).

Layout: `<root>/main_data/metadata_phase_{1,2,3}.csv` (id, split, eye_tracking_data_discarded, image, dicom_id,
subject_id, image_size_x, image_size_y, then one column per label: certainty 0-5, or True/False for "Support
devices" / "Quality issue"), and per reading `<root>/main_data/<id>/fixations.csv`, `chest_bounding_box.csv`,
`anomaly_location_ellipses.csv`. Images are MIMIC-CXR DICOMs; the `image` column's `files/pXX/pNNNNNNNN/sNNNNNNNN/
<dicom_id>.dcm` tail is resolved under `mimic_root`.

Facts of the official code (ricbl/eyetracking): positions are image pixels; a fixation's heat-map Gaussian has
sigma = 1 degree of visual angle = angular_resolution_{x,y}_pixels_per_degree image pixels, is restricted to the
image rectangle shown on screen at that moment (xmin..ymax_shown_from_image, zoom/pan) and is weighted by
timestamp_end_fixation - timestamp_start_fixation. Labels count as present at certainty >= 3 ("possibly").

Fixations outside the shown rectangle (or the image) are gaze on the interface, not the radiograph:
`outside="drop"` (default) removes them; "clip" moves them onto the rectangle's edge; "keep" keeps them (with
`Fixations.shown_rects` this reproduces the official maps, where such a fixation adds only a Gaussian tail).
Discarded readings (eye_tracking_data_discarded) are skipped. `group_by="image"` (default) merges all readings of
an image into one record (`Fixations.readers` = reading id, the only reader identity the data set releases; a
label is 1 when at least half the readings mark it); "reading" gives one record per reading.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from gazejax.data import dicom
from gazejax.data.cxr.labels import CXRRecord, DropTally, Fixations, RowChecks, parse_float, read_csv
from gazejax.data.errors import DataError

META_COLUMNS = ("id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id", "image_size_x",
                "image_size_y")
PHASE_LABELS = {
    1: ("Airway wall thickening", "Atelectasis", "Consolidation", "Emphysema", "Enlarged cardiac silhouette",
        "Fibrosis", "Fracture", "Groundglass opacity", "Mass", "Nodule", "Pleural effusion", "Pleural thickening",
        "Pneumothorax", "Pulmonary edema", "Quality issue", "Support devices", "Wide mediastinum"),
    2: ("Abnormal mediastinal contour", "Acute fracture", "Atelectasis", "Consolidation",
        "Enlarged cardiac silhouette", "Enlarged hilum", "Groundglass opacity", "Hiatal hernia",
        "High lung volume / emphysema", "Interstitial lung disease", "Lung nodule or mass", "Pleural abnormality",
        "Pneumothorax", "Pulmonary edema", "Support devices"),
}
PHASE_LABELS[3] = PHASE_LABELS[2]
FIXATION_COLUMNS = (
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position", "pupil_area_normalized",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree", "window_width",
    "window_level", "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
    "ymax_shown_from_image", "xmin_in_screen_coordinates", "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates", "ymax_in_screen_coordinates")
_FIX_NEEDED = FIXATION_COLUMNS[:4] + FIXATION_COLUMNS[5:7] + FIXATION_COLUMNS[9:13]
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
_IMAGE_TAIL = re.compile(r"(files/p\d+/p\d+/s(\d+)/[^/\\]+\.dcm)$")


def _fixations(path: str, reading_id: str, size: tuple[int, int], outside: str, degrees: float,
               tally: DropTally) -> Fixations:
    """One reading's fixations.csv -> Fixations (sigma = `degrees` * pixels per degree, x and y); dropped rows are
    added to `tally` (the data set's one warning)."""
    header, rows = read_csv(path, _FIX_NEEDED)
    col = [header.index(c) for c in _FIX_NEEDED]
    try:
        v = np.array([[parse_float(r[c]) for c in col] for r in rows], np.float64).reshape(-1, len(col))
    except ValueError as err:
        raise DataError(f"{path}: bad number ({err})") from err
    points, rects = v[:, 2:4], v[:, 6:10]
    lo = np.maximum(rects[:, :2], 0.0)
    hi = np.minimum(rects[:, 2:], np.array(size[::-1], np.float64) - 1.0)
    finite = np.isfinite(points).all(axis=1)
    checks = RowChecks(np.arange(len(v)) + 2)
    checks.add(finite, "x_position or y_position is not a finite number")
    checks.add(np.isfinite(v[:, 0]) & (v[:, 1] - v[:, 0] > 0), "fixation duration (end - start) is not > 0")
    checks.add(np.isfinite(v[:, 4:6]).all(axis=1) & (v[:, 4:6] > 0).all(axis=1),
               "angular resolution (pixels per degree) is not > 0")
    if outside == "drop":
        checks.add(((points >= lo) & (points <= hi)).all(axis=1) | ~finite, "outside the image region shown")
    keep = checks.report(path, tally)
    if outside == "clip":
        points = np.clip(points, lo, hi)
    fix = Fixations(points=points.astype(np.float32), durations=(v[:, 1] - v[:, 0]).astype(np.float32),
                    readers=np.full(len(v), reading_id), sigma=(degrees * v[:, 4:6]).astype(np.float32),
                    start_times=v[:, 0].astype(np.float32), shown_rects=rects.astype(np.float32))
    return fix.subset(keep)


def _boxes(folder: str, positive: float) -> dict[str, list]:
    """Chest box and anomaly ellipses (certainty >= positive) of one reading, as name -> list of boxes."""
    out: dict[str, list] = {}
    chest = os.path.join(folder, "chest_bounding_box.csv")
    if os.path.isfile(chest):
        header, rows = read_csv(chest, BOX_COLUMNS)
        out["chest"] = [[float(r[header.index(c)]) for c in BOX_COLUMNS] for r in rows]
    ellipses = os.path.join(folder, "anomaly_location_ellipses.csv")
    if os.path.isfile(ellipses):
        header, rows = read_csv(ellipses, BOX_COLUMNS + ("certainty",))
        label_cols = [c for c in header if c not in BOX_COLUMNS + ("certainty",)]
        for r in rows:
            if parse_float(r[header.index("certainty")]) < positive:
                continue
            box = [float(r[header.index(c)]) for c in BOX_COLUMNS]
            for name in label_cols:
                if r[header.index(name)].strip().lower() == "true":
                    out.setdefault(f"ellipse/{name}", []).append(box)
    return out


def _binary(raw: str, positive: float) -> float:
    """Metadata cell -> 0/1: True/False columns as such, certainties by threshold, blank -> NaN."""
    value = parse_float(raw)
    if raw.strip().lower() in ("true", "false") or np.isnan(value):
        return value
    return float(value >= positive)


class REFLACX:
    """REFLACX records with per-fixation sigma; see the module docstring for the options."""

    def __init__(self, root: str | os.PathLike, mimic_root: str | os.PathLike, *, phases: Sequence[int] = (1, 2, 3),
                 group_by: str = "image", outside: str = "drop", positive_certainty: float = 3.0,
                 degrees: float = 1.0):
        if group_by not in ("image", "reading"):
            raise ValueError(f"REFLACX group_by must be 'image' or 'reading', got {group_by!r}")
        if outside not in ("drop", "clip", "keep"):
            raise ValueError(f"REFLACX outside must be 'drop', 'clip' or 'keep', got {outside!r}")
        self.root, self.mimic_root = os.fspath(root), os.fspath(mimic_root)
        self.phases, self.group_by, self.outside = tuple(phases), group_by, outside
        self.positive, self.degrees = float(positive_certainty), float(degrees)
        self._records: list[CXRRecord] | None = None

    def records(self) -> list[CXRRecord]:
        """Records in metadata order (phase 1, 2, 3), parsed once and cached."""
        if self._records is None:
            tally = DropTally()
            readings = [r for p in self.phases for r in self._read_phase(p, tally)]
            tally.warn(os.path.join(self.root, "main_data"))
            if not readings and not any(os.path.isfile(self._meta_path(p)) for p in self.phases):
                raise DataError(f"{self.root}: no main_data/metadata_phase_*.csv for phases {self.phases}")
            if self.group_by == "reading":
                self._records = readings
            else:
                groups: dict[str, list[CXRRecord]] = {}
                for r in readings:
                    groups.setdefault(r.dicom_id, []).append(r)
                self._records = [self._merge(g) for g in groups.values()]
        return self._records

    def load_image(self, record: CXRRecord) -> np.ndarray:
        """Display-ready DICOM float32 [H, W] in [0, 1]."""
        return dicom.read(record.image_path)

    def _meta_path(self, phase: int) -> str:
        return os.path.join(self.root, "main_data", f"metadata_phase_{phase}.csv")

    def _read_phase(self, phase: int, tally: DropTally) -> list[CXRRecord]:
        path = self._meta_path(phase)
        if not os.path.isfile(path):
            return []
        header, rows = read_csv(path, META_COLUMNS)
        col = {c: i for i, c in enumerate(header)}
        label_cols = [c for c in header if c not in META_COLUMNS and c != "Other"]
        out = []
        for row in rows:
            get = lambda c: row[col[c]].strip()  # noqa: E731
            if get("eye_tracking_data_discarded").lower() == "true":
                continue
            rid, match = get("id"), _IMAGE_TAIL.search(get("image").replace("\\", "/"))
            if match is None:
                raise DataError(f"{path}: reading {rid}: image '{get('image')}' has no files/pXX/.../*.dcm tail")
            try:
                size = (int(float(get("image_size_y"))), int(float(get("image_size_x"))))
                raw = {c: parse_float(row[col[c]]) for c in label_cols}
                labels = {c: _binary(row[col[c]], self.positive) for c in label_cols}
            except ValueError as err:
                raise DataError(f"{path}: reading {rid}: bad number ({err})") from err
            folder = os.path.join(self.root, "main_data", rid)
            fix = _fixations(os.path.join(folder, "fixations.csv"), rid, size, self.outside, self.degrees, tally)
            boxes = {k: np.asarray(v, np.float32) for k, v in _boxes(folder, self.positive).items()}
            out.append(CXRRecord(
                dicom_id=get("dicom_id"), patient_id=get("subject_id"), study_id=match.group(2),
                image_path=os.path.join(self.mimic_root, match.group(1)), labels=labels, fixations=fix,
                boxes=boxes, meta={"reading_ids": [rid], "phases": [phase], "split": get("split"),
                                   "image_size": size, "reading_labels": {rid: raw}}))
        return out

    @staticmethod
    def _merge(readings: list[CXRRecord]) -> CXRRecord:
        """All readings of one image: fixations concatenated, boxes pooled, labels by majority (ties -> 1)."""
        first = readings[0]
        if len(readings) == 1:
            return first
        names = dict.fromkeys(n for r in readings for n in r.labels)
        labels = {}
        for n in names:
            votes = np.array([r.labels[n] for r in readings if n in r.labels and not np.isnan(r.labels[n])])
            labels[n] = float(votes.mean() >= 0.5) if votes.size else float("nan")
        boxes: dict[str, list] = {}
        for r in readings:
            for k, v in r.boxes.items():
                boxes.setdefault(k, []).append(v)
        meta = {"reading_ids": [i for r in readings for i in r.meta["reading_ids"]],
                "phases": [p for r in readings for p in r.meta["phases"]], "split": first.meta["split"],
                "image_size": first.meta["image_size"],
                "reading_labels": {k: v for r in readings for k, v in r.meta["reading_labels"].items()}}
        return CXRRecord(dicom_id=first.dicom_id, patient_id=first.patient_id, study_id=first.study_id,
                         image_path=first.image_path, labels=labels,
                         fixations=Fixations.concat([r.fixations for r in readings]),
                         boxes={k: np.concatenate(v, axis=0) for k, v in boxes.items()}, meta=meta)
