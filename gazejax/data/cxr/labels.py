"""Chest X-ray records shared by the EGD-CXR and REFLACX readers, and the label sets built from them.

Label sets:
  - "3class": Normal / CHF / pneumonia (EGD-CXR master sheet), one int class per image (Karargyris et al.).
  - "5label": the CheXpert competition findings Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion,
    from EGD-CXR's `*__chx` columns (1 positive, 0 negative, -1 uncertain, blank not mentioned) or REFLACX's
    reader labels (already binarised by the reader at certainty >= 3, "possibly" or higher).
Policy for uncertain (-1) and blank: "ones", "zeros" or "ignore" (masked out); default uncertain -> ones (CheXpert
"U-Ones"), blank -> zeros.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import Any, Sequence

import numpy as np

from gazejax.data.errors import DataError

log = logging.getLogger("gazejax")


@dataclasses.dataclass
class Fixations:
    """Fixations of one image in original-image pixels (x = column, y = row; pixel i centred at i). `points_yx` /
    `sigma_yx` give the (row, col) order `gazejax.data.gaze` renders in.

    points float32 [N, 2]; durations float32 [N] seconds; readers [N] str (reader or reading id);
    sigma float32 [N, 2] (x, y) pixels for one degree of visual angle where the data set defines it, else None;
    start_times float32 [N] seconds or None; shown_rects float32 [N, 4] (xmin, ymin, xmax, ymax) image region on
    screen at that fixation (REFLACX zoom/pan) or None.
    """

    points: np.ndarray
    durations: np.ndarray
    readers: np.ndarray
    sigma: np.ndarray | None = None
    start_times: np.ndarray | None = None
    shown_rects: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def points_yx(self) -> np.ndarray:
        """points [N, 2] in (row, col) order, the order of `gazejax.data.gaze.render_gaussians`."""
        return self.points[:, ::-1].copy()

    @property
    def sigma_yx(self) -> np.ndarray | None:
        """sigma [N, 2] in (row, col) order (as `gazejax.data.gaze.reflacx_sigma` returns it), or None."""
        return None if self.sigma is None else self.sigma[:, ::-1].copy()

    @classmethod
    def empty(cls) -> "Fixations":
        return cls(np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0,), dtype=str))

    def subset(self, keep: np.ndarray) -> "Fixations":
        """The fixations where boolean `keep` [N] is True."""
        return Fixations(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[keep])
                            for f in dataclasses.fields(self)})

    @classmethod
    def concat(cls, parts: Sequence["Fixations"]) -> "Fixations":
        """Concatenate fixations (e.g. of several readers); optional fields survive only if every part has them."""
        if not parts:
            return cls.empty()
        fields = {}
        for f in dataclasses.fields(cls):
            values = [getattr(p, f.name) for p in parts]
            fields[f.name] = None if any(v is None for v in values) else np.concatenate(values, axis=0)
        return cls(**fields)


@dataclasses.dataclass
class CXRRecord:
    """One chest radiograph with its labels, gaze and annotations (original-image pixel coordinates).

    labels: name -> float (NaN = blank / not mentioned); masks: organ name -> PNG path or None;
    boxes: name -> float32 [K, 4] (xmin, ymin, xmax, ymax); meta: data-set specific extras.
    """

    dicom_id: str
    patient_id: str
    study_id: str
    image_path: str
    labels: dict[str, float]
    fixations: Fixations
    masks: dict[str, str | None] = dataclasses.field(default_factory=dict)
    boxes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def read_csv(path: str | os.PathLike, required: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; DataError naming the file if it is missing or lacks `required` columns."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text CSV (byte {err.start}: {err.reason})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV ({err})") from None
    if header is None:
        raise DataError(f"{path}: empty CSV file")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 2} has {len(rows[bad])} fields, header has {len(header)}")
    return header, rows


def write_columns(path: str | os.PathLike, columns: Sequence[str], data: dict, n: int, fmt: dict) -> None:
    """Write a CSV column-wise: data maps column -> array [n] (printf format fmt.get(column, "%d")) or a constant
    string; missing columns are "0". Vectorised formatting, for gaze tables of 10^5 rows."""
    cells = []
    for c in columns:
        value = data.get(c, "0")
        cells.append([value] * n if isinstance(value, str) else np.char.mod(fmt.get(c, "%d"), value).tolist())
    with open(path, "w", newline="") as f:
        f.write(",".join(columns) + "\r\n")
        f.writelines(",".join(row) + "\r\n" for row in zip(*cells))


class RowChecks:
    """Per-row validity of a fixation file: `add(ok, reason)` records a check over its rows; `report(path)` logs one
    warning with the number of dropped rows and the first bad row (spreadsheet numbering: header = row 1) and
    raises DataError when no row is usable."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows)  # CSV row number of each entry
        self.bad = np.zeros(len(self.rows), bool)
        self.reasons: list[tuple[np.ndarray, str]] = []

    def add(self, ok: np.ndarray, reason: str) -> None:
        ok = np.asarray(ok, bool)
        self.reasons.append((ok, reason))
        self.bad |= ~ok

    def first(self) -> str:
        i = int(np.argmax(self.bad))
        return f"row {int(self.rows[i])}: " + next(r for ok, r in self.reasons if not ok[i])

    def report(self, path: str, tally: DropTally | None = None) -> np.ndarray:
        """The keep mask; warns once or raises (see the class docstring). With `tally` (a data set of one fixation
        file per reading) the drops are added to it instead, for its one warning over all files."""
        if len(self.rows) and self.bad.all():
            raise DataError(f"{path}: no usable fixation: all {len(self.rows)} rows are bad (first: {self.first()})")
        if tally is not None:
            tally.add(path, self)
        elif self.bad.any():
            log.warning("%s: dropped %d of %d fixations (first: %s)", path, int(self.bad.sum()), len(self.rows),
                        self.first())
        return ~self.bad


class DropTally:
    """Dropped fixation rows summed over the many files of one data set (REFLACX has one fixations.csv per reading,
    ~3,000): `warn(source)` logs one warning with the totals, the rows per reason (a row failing several checks
    counts under each) and the first bad file and row, instead of one warning per file."""

    def __init__(self):
        self.files = self.files_with_drops = self.rows = self.dropped = 0
        self.reasons: dict[str, int] = {}
        self.first: str | None = None

    def add(self, path: str, checks: RowChecks) -> None:
        self.files += 1
        self.rows += len(checks.rows)
        if not checks.bad.any():
            return
        self.files_with_drops += 1
        self.dropped += int(checks.bad.sum())
        for ok, reason in checks.reasons:
            if (~ok).any():
                self.reasons[reason] = self.reasons.get(reason, 0) + int((~ok).sum())
        if self.first is None:
            self.first = f"{path} {checks.first()}"

    def warn(self, source: str) -> None:
        """One warning naming `source` (the data set's root), or nothing when no row was dropped."""
        if self.dropped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.reasons.items())
            log.warning("%s: dropped %d of %d fixations in %d of %d fixation files (%s; first: %s)", source,
                        self.dropped, self.rows, self.files_with_drops, self.files, reasons, self.first)


def parse_float(value: str) -> float:
    """CSV cell -> float; blank -> NaN; True/False -> 1/0."""
    value = value.strip()
    if value == "":
        return float("nan")
    low = value.lower()
    if low in ("true", "false"):
        return float(low == "true")
    return float(value)


THREE_CLASS = ("Normal", "CHF", "pneumonia")
FIVE_LABEL = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
LABEL_SETS = {"3class": THREE_CLASS, "5label": FIVE_LABEL}
# Where each 5-label finding lives: EGD-CXR CheXpert column, then REFLACX names (phase 1; phases 2-3).
FIVE_LABEL_SOURCES = {
    "Atelectasis": ("atelectasis__chx", "Atelectasis"),
    "Cardiomegaly": ("cardiomegaly__chx", "Enlarged cardiac silhouette"),
    "Consolidation": ("consolidation__chx", "Consolidation"),
    "Edema": ("edema__chx", "Pulmonary edema"),
    "Pleural Effusion": ("pleural_effusion__chx", "Pleural effusion", "Pleural abnormality"),
}
_CHOICES = ("ones", "zeros", "ignore")


@dataclasses.dataclass(frozen=True)
class LabelPolicy:
    """What uncertain (-1) and blank labels become: "ones", "zeros" or "ignore" (mask 0)."""

    uncertain: str = "ones"
    blank: str = "zeros"

    def __post_init__(self):
        for name in ("uncertain", "blank"):
            if getattr(self, name) not in _CHOICES:
                raise ValueError(f"LabelPolicy.{name} must be one of {_CHOICES}, got {getattr(self, name)!r}")

    @classmethod
    def parse(cls, policy: "LabelPolicy | str | dict | None") -> "LabelPolicy":
        """None -> default; "zeros" -> uncertain policy; "uncertain=ignore,blank=zeros" or a dict -> both."""
        if policy is None:
            return cls()
        if isinstance(policy, LabelPolicy):
            return policy
        if isinstance(policy, dict):
            return cls(**policy)
        if "=" not in policy:
            return cls(uncertain=policy)
        return cls(**dict(item.split("=", 1) for item in policy.split(",")))


def label_names(label_set: str) -> tuple[str, ...]:
    """Class / finding names of a label set ("3class" or "5label")."""
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    return LABEL_SETS[label_set]


def _lookup(record: CXRRecord, sources: Sequence[str]) -> float:
    for name in sources:
        if name in record.labels:
            return record.labels[name]
    return float("nan")


def _apply_policy(value: float, policy: LabelPolicy) -> tuple[float, bool]:
    if np.isnan(value):
        choice = policy.blank
    elif value < 0:
        choice = policy.uncertain
    else:
        return float(value > 0), True
    return (1.0 if choice == "ones" else 0.0), choice != "ignore"


def make_labels(records: Sequence[CXRRecord], label_set: str,
                policy: LabelPolicy | str | dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets and validity masks.

    "3class": y int32 [N] (0 Normal, 1 CHF, 2 pneumonia), mask bool [N] (False unless exactly one is positive).
    "5label": y float32 [N, 5] in FIVE_LABEL order, mask bool [N, 5] (False where the policy says "ignore").
    """
    names = label_names(label_set)
    if label_set == "3class":
        y = np.zeros(len(records), np.int32)
        mask = np.zeros(len(records), bool)
        for i, rec in enumerate(records):
            if not all(n in rec.labels for n in names):
                raise DataError(f"{rec.dicom_id}: record has no {list(names)} labels for label set '3class'")
            hot = np.array([rec.labels[n] == 1 for n in names])
            mask[i] = hot.sum() == 1
            y[i] = int(np.argmax(hot))
        return y, mask
    pol = LabelPolicy.parse(policy)
    y = np.zeros((len(records), len(names)), np.float32)
    mask = np.zeros((len(records), len(names)), bool)
    for i, rec in enumerate(records):
        for j, name in enumerate(names):
            y[i, j], mask[i, j] = _apply_policy(_lookup(rec, FIVE_LABEL_SOURCES[name]), pol)
    return y, mask
