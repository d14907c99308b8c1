"""Reader for EGD-CXR (Karargyris et al. 2021, PhysioNet egd-cxr 1.0.0): labels, fixations, organ masks, boxes.

Layout: `<root>/master_sheet.csv`, `fixations.csv`, `eye_gaze.csv`, `bounding_boxes.csv`,
`audio_segmentation_transcripts/<dicom_id>/{left_lung,right_lung,mediastanum,aortic_knob}.png`; images are
MIMIC-CXR DICOMs at `<mimic_root>/<master_sheet.path>`.

Gaze coordinates (facts of cxr-eye-gaze/eye-gaze-dataset): the 1920x1080 screen showed the image between pads
(master sheet `image_{top,bottom,left,right}_pad`); FPOGX/FPOGY are screen fractions and
    x = (FPOGX * 1920 - left) * W / (1920 - left - right),   y = (FPOGY * 1080 - top) * H / (1080 - top - bottom).
X_ORIGINAL/Y_ORIGINAL hold int() of that. Gaze off the image (FPOG outside the pads, the data set's own test; its
X/Y_ORIGINAL sentinel int(-W / shown width) is negative) is dropped. `coords="original"` (default) reads X/Y_ORIGINAL;
`coords="fpog"` recomputes the continuous value from FPOG (W, H from the DICOM header).

Truncated DICOM_IDs: the data set's calibration screens (a white dot at the screen centre, shown every 20th image)
are named after a real image minus its last 5 characters (`image_preparation.py`), and their rows' X/Y_ORIGINAL
are screen pixels (the mapping found no DICOM; its heat-map script says "else it is a calibration image"; issue #2
of that repository shows such an ID, 5 characters short). They are not gaze on a radiograph, so
`truncated_ids="drop"` (default) skips every DICOM_ID that is not in the master sheet. `truncated_ids="match"`
instead assigns a truncated ID to the unique master-sheet ID it prefixes (ambiguous prefix -> DataError).

The data set identifies no reader, so `Fixations.readers` is "egd_cxr" throughout; `sigma` is None (the data
set's own heat maps use 150 px at DICOM resolution).
"""

from __future__ import annotations

import bisect
import os
from typing import Sequence

import numpy as np
from PIL import Image

from gazejax.data import dicom
from gazejax.data.cxr.labels import CXRRecord, Fixations, RowChecks, parse_float, read_csv
from gazejax.data.errors import DataError

SCREEN = (1920, 1080)  # (width, height) of the EGD-CXR display, fixed by the experiment
READER_ID = "egd_cxr"
ORGANS = ("left_lung", "right_lung", "mediastanum", "aortic_knob")  # "mediastanum" is the data set's spelling
PAD_COLUMNS = ("image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad")
CLASS_COLUMNS = ("Normal", "CHF", "pneumonia")
FINDING_COLUMNS = (
    "consolidation", "enlarged_cardiac_silhouette", "linear__patchy_atelectasis", "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__", "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity", "normal_anatomically", "elevated_hemidiaphragm", "hyperaeration",
    "vascular_redistribution")
CHEXPERT_COLUMNS = (
    "atelectasis__chx", "cardiomegaly__chx", "consolidation__chx", "edema__chx", "enlarged_cardiomediastinum__chx",
    "fracture__chx", "lung_lesion__chx", "lung_opacity__chx", "no_finding__chx", "pleural_effusion__chx",
    "pleural_other__chx", "pneumonia__chx", "pneumothorax__chx", "support_devices__chx")
LABEL_COLUMNS = CLASS_COLUMNS + FINDING_COLUMNS + CHEXPERT_COLUMNS
MASTER_COLUMNS = (
    ("dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age") + PAD_COLUMNS
    + tuple(f"dx{i}{s}" for i in range(1, 10) for s in ("", "_icd")) + ("normal_reports",) + LABEL_COLUMNS
    + ("cxr_exam_indication",))
GAZE_COLUMNS = (
    "SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "TIMETICK(f=10000000)", "FPOGX", "FPOGY",
    "FPOGS", "FPOGD", "FPOGID", "FPOGV", "BPOGX", "BPOGY", "BPOGV", "LPCX", "LPCY", "LPD", "LPS", "LPV", "RPCX",
    "RPCY", "RPD", "RPS", "RPV", "BKID", "BKDUR", "BKPMIN", "LPMM", "LPMMV", "RPMM", "RPMMV", "SACCADE_MAG",
    "SACCADE_DIR", "VID_FRAME", "X_ORIGINAL", "Y_ORIGINAL")
BOX_COLUMNS = ("dicom_id", "bbox_name", "x1", "x2", "y1", "y2")
_GAZE_NEEDED = ("DICOM_ID", "Time (in secs)", "FPOGX", "FPOGY", "FPOGS", "FPOGD", "X_ORIGINAL", "Y_ORIGINAL")


def display_pads(h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) screen pads the data set computed for an [H, W] image (`resize_pad(image,
    1920, 1024)` in image_preparation.py: longest side scaled to 1024, then centred on 1920 x 1024)."""
    ratio = 1024 / max(h, w)
    dh, dw = 1024 - int(h * ratio), 1920 - int(w * ratio)
    return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2


def screen_to_image(fpog: np.ndarray, pads: Sequence[float], image_size: Sequence[int],
                    screen: Sequence[int] = SCREEN) -> np.ndarray:
    """FPOG screen fractions [N, 2] (x, y) -> original-image pixels [N, 2] (continuous; see module docstring).

    pads = (top, bottom, left, right) screen pixels; image_size = (H, W); screen = (width, height).
    """
    top, bottom, left, right = (float(p) for p in pads)
    (h, w), (sw, sh) = image_size, screen
    fpog = np.asarray(fpog, dtype=np.float64)
    x = (fpog[:, 0] * sw - left) * w / (sw - left - right)
    y = (fpog[:, 1] * sh - top) * h / (sh - top - bottom)
    return np.stack([x, y], axis=1)


def match_prefixes(ids: Sequence[str], known: Sequence[str], source: str = "fixations") -> dict[str, str | None]:
    """Each id -> itself if known, else the unique known id it prefixes, else None; ambiguous -> DataError."""
    known_set, ordered = set(known), sorted(known)
    out: dict[str, str | None] = {}
    for i in set(ids):
        if i in known_set or not i:
            out[i] = i if i else None
            continue
        lo = bisect.bisect_left(ordered, i)
        hits = []
        while lo < len(ordered) and ordered[lo].startswith(i) and len(hits) < 2:
            hits.append(ordered[lo])
            lo += 1
        if len(hits) > 1:
            raise DataError(f"{source}: DICOM_ID '{i}' is a prefix of several images ({hits[0]}, {hits[1]}, ...)")
        out[i] = hits[0] if hits else None
    return out


def _sample_durations(times: np.ndarray) -> np.ndarray:
    """Raw 60 Hz samples: each lasts until the next; the last one lasts the median interval."""
    if len(times) < 2:
        return np.full(len(times), 1.0 / 60.0, np.float32)
    step = np.diff(times)
    return np.append(step, np.median(step)).astype(np.float32)


class EGDCXR:
    """EGD-CXR records with fixations in original-DICOM pixels; see the module docstring for the options."""

    def __init__(self, root: str | os.PathLike, mimic_root: str | os.PathLike, *, source: str = "fixations",
                 coords: str = "original", truncated_ids: str = "drop", screen: Sequence[int] = SCREEN):
        for name, value, options in (("source", source, ("fixations", "eye_gaze")),
                                     ("coords", coords, ("original", "fpog")),
                                     ("truncated_ids", truncated_ids, ("drop", "match"))):
            if value not in options:
                raise ValueError(f"EGDCXR {name} must be one of {options}, got {value!r}")
        self.root, self.mimic_root = os.fspath(root), os.fspath(mimic_root)
        self.source, self.coords, self.truncated_ids, self.screen = source, coords, truncated_ids, tuple(screen)
        self._records: list[CXRRecord] | None = None

    def records(self) -> list[CXRRecord]:
        """All master-sheet images in file order (parsed once, then cached)."""
        if self._records is None:
            records = self._read_master()
            boxes = self._read_boxes({r.dicom_id for r in records})
            gaze = self._read_gaze(records)
            for rec in records:
                rec.boxes = boxes.get(rec.dicom_id, {})
                rec.fixations = gaze.get(rec.dicom_id, Fixations.empty())
            self._records = records
        return self._records

    def load_image(self, record: CXRRecord) -> np.ndarray:
        """Display-ready DICOM float32 [H, W] in [0, 1]."""
        return dicom.read(record.image_path)

    def load_mask(self, record: CXRRecord, name: str) -> np.ndarray:
        """Organ mask bool [H, W] (PNG value >= 128) for one of ORGANS."""
        path = record.masks.get(name)
        if name not in ORGANS:
            raise ValueError(f"mask name must be one of {ORGANS}, got {name!r}")
        if path is None:
            raise DataError(f"{record.dicom_id}: no {name}.png under audio_segmentation_transcripts/")
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("L")) >= 128
        except OSError as err:
            raise DataError(f"{path}: unreadable mask PNG ({err})") from err

    def _read_master(self) -> list[CXRRecord]:
        path = os.path.join(self.root, "master_sheet.csv")
        header, rows = read_csv(path, ("dicom_id", "path", "study_id", "patient_id") + PAD_COLUMNS)
        col = {c: i for i, c in enumerate(header)}
        records, seen = [], set()
        for row in rows:
            did = row[col["dicom_id"]].strip()
            if did in seen:
                raise DataError(f"{path}: duplicate dicom_id {did}")
            seen.add(did)
            try:
                labels = {c: parse_float(row[col[c]]) for c in LABEL_COLUMNS if c in col}
                pads = tuple(float(row[col[c]]) for c in PAD_COLUMNS)
            except ValueError as err:
                raise DataError(f"{path}: dicom_id {did}: bad number ({err})") from err
            seg = os.path.join(self.root, "audio_segmentation_transcripts", did)
            masks = {o: (p if os.path.isfile(p := os.path.join(seg, f"{o}.png")) else None) for o in ORGANS}
            meta = {"pads": pads, **{k: row[col[k]] for k in ("gender", "anchor_age", "stay_id",
                                                                 "cxr_exam_indication") if k in col}}
            records.append(CXRRecord(
                dicom_id=did, patient_id=row[col["patient_id"]].strip(), study_id=row[col["study_id"]].strip(),
                image_path=os.path.join(self.mimic_root, row[col["path"]].strip()), labels=labels,
                fixations=Fixations.empty(), masks=masks, meta=meta))
        return records

    def _read_boxes(self, known: set[str]) -> dict[str, dict[str, np.ndarray]]:
        path = os.path.join(self.root, "bounding_boxes.csv")
        if not os.path.isfile(path):
            return {}
        header, rows = read_csv(path, BOX_COLUMNS)
        col = {c: i for i, c in enumerate(header)}
        out: dict[str, dict[str, list]] = {}
        for row in rows:
            did = row[col["dicom_id"]].strip()
            if did in known:
                x1, x2, y1, y2 = (float(row[col[c]]) for c in ("x1", "x2", "y1", "y2"))
                out.setdefault(did, {}).setdefault(row[col["bbox_name"]], []).append((x1, y1, x2, y2))
        return {d: {n: np.asarray(b, np.float32) for n, b in named.items()} for d, named in out.items()}

    def _read_gaze(self, records: list[CXRRecord]) -> dict[str, Fixations]:
        path = os.path.join(self.root, f"{self.source}.csv")
        header, rows = read_csv(path, _GAZE_NEEDED)
        col = {c: i for i, c in enumerate(header)}
        ids = [row[col["DICOM_ID"]].strip() for row in rows]
        known = [r.dicom_id for r in records]
        if self.truncated_ids == "match":
            resolve = match_prefixes(ids, known, path)
        else:
            known_set = set(known)
            resolve = {i: (i if i in known_set else None) for i in set(ids)}
        groups: dict[str, list[int]] = {}
        for k, i in enumerate(ids):
            if (full := resolve[i]) is not None:
                groups.setdefault(full, []).append(k)
        by_id = {r.dicom_id: r for r in records}
        names = ("FPOGX", "FPOGY", "X_ORIGINAL", "Y_ORIGINAL", "FPOGS", "FPOGD", "Time (in secs)")
        parts, row_numbers, oks = {}, [], []
        for did, idx in groups.items():
            try:
                values = np.array([[float(rows[k][col[n]]) for n in names] for k in idx], np.float64)
            except ValueError as err:
                raise DataError(f"{path}: DICOM_ID {did}: bad number ({err})") from err
            parts[did], ok = self._fixations(values, by_id[did])
            row_numbers.append(np.asarray(idx) + 2)
            oks.append(ok)
        if not parts:
            return {}
        checks = RowChecks(np.concatenate(row_numbers))  # one warning (or error) for the whole file
        for reason in oks[0]:
            checks.add(np.concatenate([ok[reason] for ok in oks]), reason)
        keep = np.split(checks.report(path), np.cumsum([len(n) for n in row_numbers])[:-1])
        return {did: fix.subset(k) for (did, fix), k in zip(parts.items(), keep)}

    def _fixations(self, v: np.ndarray, record: CXRRecord) -> tuple[Fixations, dict[str, np.ndarray]]:
        """Columns of v: FPOGX, FPOGY, X_ORIGINAL, Y_ORIGINAL, FPOGS, FPOGD, Time (in secs). Returns every row's
        fixation and the row checks by reason (the caller drops failing rows with one warning per file)."""
        top, bottom, left, right = record.meta["pads"]
        (sw, sh), eye = self.screen, v[:, 0:2] * self.screen
        # the data set's own on-image test (its X/Y_ORIGINAL = int(-W/w') sentinel is 0, not negative, when the
        # image was shown larger than its pixel size)
        on_image = (eye[:, 0] > left) & (eye[:, 0] < sw - right) & (eye[:, 1] > top) & (eye[:, 1] < sh - bottom)
        if self.coords == "original":
            points = v[:, 2:4]
            on_image &= (points >= 0).all(axis=1)
        else:
            header = dicom.read_header(record.image_path)
            size = (header["rows"], header["cols"])
            points = screen_to_image(v[:, 0:2], record.meta["pads"], size, self.screen)
            on_image &= ((points >= 0) & (points < np.array(size[::-1]))).all(axis=1)
        if self.source == "fixations":
            durations, starts = v[:, 5], v[:, 4]
        else:
            durations, starts = _sample_durations(v[:, 6]), v[:, 6]
        finite = np.isfinite(points).all(axis=1) & np.isfinite(v[:, 0:2]).all(axis=1)
        checks = {"coordinates are not finite numbers": finite,
                  "duration is not > 0": np.isfinite(durations) & (np.asarray(durations) > 0),
                  "start time is not a finite number": np.isfinite(starts),
                  "off the image (the data set's on-image test)": on_image | ~finite}
        fix = Fixations(points=points.astype(np.float32), durations=np.asarray(durations, np.float32),
                        readers=np.full(len(v), READER_ID), start_times=np.asarray(starts, np.float32))
        return fix, checks
