"""BraTS cases as cached, preprocessed records: each case is read once (NIfTI decoding is the slow part), cropped to
its non-zero box and intensity-normalised as in open_brats2020, and stored as .npy files under the cache folder
(training examples memory-map them). Fixations are kept as points in the cropped frame.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

from gazejax.data import gaze as gaze_lib
from gazejax.data import io, transforms3d
from gazejax.data.brats import reader as brats

log = logging.getLogger("gazejax")

SAN_STRIDE = 16  # SAN output grid = 1/16 of the input (4x down-sampling, then two 2x max-pools)


@dataclasses.dataclass
class CaseRecord:
    """A cached, preprocessed case. Arrays live in `cache_dir` as <case_id>_{image,seg}.npy."""

    case_id: str
    cache_dir: str
    bbox: tuple            # ((x0,x1),(y0,y1),(z0,z1)) of the crop in the original array
    shape: tuple           # original array shape (X, Y, Z)
    affine: np.ndarray
    spacing: tuple
    has_seg: bool
    points: np.ndarray     # [N, 3] fixations in the cropped frame (selected readers)
    weights: np.ndarray    # [N] fixation durations
    gaze_norm: float       # max of the full-case gaze map at the SAN scale (0 when no gaze)
    survival_class: int    # -1 unknown
    content_sha1: str = ""  # of the preprocessed image: equal hashes under two ids are one scan (a split leak)

    @property
    def has_gaze(self) -> bool:
        """True when the case's rendered gaze map is non-zero (not merely when a fixation file exists)."""
        return self.gaze_norm > 0

    def image(self) -> np.ndarray:
        return np.load(os.path.join(self.cache_dir, f"{self.case_id}_image.npy"), mmap_mode="r")

    def seg(self) -> np.ndarray | None:
        return np.load(os.path.join(self.cache_dir, f"{self.case_id}_seg.npy"), mmap_mode="r") if self.has_seg \
            else None

    def full_seg(self) -> np.ndarray | None:
        """The segmentation in the original geometry (zeros outside the crop, which holds every label)."""
        if not self.has_seg:
            return None
        out = np.zeros(self.shape, np.uint8)
        out[tuple(slice(a, b) for a, b in self.bbox)] = self.seg()
        return out


def _cache_key(case_dir: str, gaze_file: str | None) -> str:
    """Changes whenever a source file of the case changes (name, size, mtime): then the case is decoded again."""
    stats = []
    for path in sorted(os.listdir(case_dir)) + ([gaze_file] if gaze_file else []):
        full = path if os.path.isabs(path) else os.path.join(case_dir, path)
        st = os.stat(full)
        stats.append(f"{os.path.basename(full)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha1("|".join(stats).encode()).hexdigest()[:16]


def _gaze_norm(points, weights, crop_shape, sigma) -> float:
    """Max of the whole case's gaze map at the SAN scale: training windows divide by it, so a window's target keeps
    the case-level scale (a window without the tumour gets a low target, not a re-normalised one)."""
    if len(points) == 0:
        return 0.0
    grid = tuple(max(1, int(np.ceil(s / SAN_STRIDE))) for s in crop_shape)
    frame = tuple(g * SAN_STRIDE for g in grid)  # the crop padded to whole SAN cells
    return float(gaze_lib.render_gaussians(points, weights, sigma, frame, grid, normalize=None).max())


def preprocess_case(case_dir: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Reads one case, crops it to its non-zero box and normalises intensities (open_brats2020).

    Returns (image float32 [x, y, z, 4], seg uint8 [x, y, z] or None, meta) with meta = {"bbox" [[x0, x1], ...],
    "shape" (original X, Y, Z), "affine" [4][4], "spacing" [3], "has_seg", "crop_shape", "content_sha1"}: what both
    the npy cache and the TFDS builder (`gazejax.data.tfds.brats2020`) store, so the two sources give identical examples.
    """
    return preprocess(brats.read_case(case_dir))


def preprocess(case: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """`preprocess_case` of a case already read (`brats.read_case` / `brats.read_volumes`)."""
    image, seg, bbox = transforms3d.crop_to_nonzero(case["image"], case["seg"])
    if case["seg"] is not None and int((case["seg"] > 0).sum()) != int((seg > 0).sum()):
        raise brats.DataError(f"{case['case_id']}: tumour labels lie outside the non-zero brain box")
    image = transforms3d.normalize_intensity(image).astype(np.float32)
    meta = {"bbox": [list(map(int, b)) for b in bbox], "shape": list(case["image"].shape[:3]),
            "affine": np.asarray(case["affine"]).tolist(), "spacing": list(map(float, case["spacing"])),
            "has_seg": seg is not None, "crop_shape": list(image.shape[:3]),
            "content_sha1": hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()}
    return image, None if seg is None else seg.astype(np.uint8), meta


def make_record(case_id: str, meta: dict, fixations: brats.Fixations | None, readers: str, sigma: float,
                survival_class: int, cache_dir: str, cls: type | None = None, **extra: Any) -> CaseRecord:
    """A CaseRecord (or subclass `cls` with `extra` fields) from `preprocess_case`'s meta and the case's fixations
    (original voxel coordinates, all readers; `readers` selects expert / non_expert / all)."""
    points, weights = np.zeros((0, 3)), np.zeros((0,))
    if fixations is not None:
        fix = brats.select_readers(fixations, readers)
        start = np.array([b[0] for b in meta["bbox"]], np.float64)
        points, weights = fix.points - start, np.asarray(fix.duration_s, np.float64)
    return (cls or CaseRecord)(
        case_id=case_id, cache_dir=cache_dir, bbox=tuple(tuple(b) for b in meta["bbox"]), shape=tuple(meta["shape"]),
        affine=np.asarray(meta["affine"]), spacing=tuple(meta["spacing"]), has_seg=meta["has_seg"], points=points,
        weights=weights, gaze_norm=_gaze_norm(points, weights, tuple(meta["crop_shape"]), sigma),
        survival_class=int(survival_class), content_sha1=str(meta.get("content_sha1", "")), **extra)


def report_duplicates(records: list[CaseRecord]) -> list[list[str]]:
    """Groups of case ids whose preprocessed images are identical (same content hash), with a warning naming them:
    one scan under two ids lands in two folds and leaks between training and test."""
    by_hash: dict[str, list[str]] = {}
    for r in records:
        if r.content_sha1:
            by_hash.setdefault(r.content_sha1, []).append(r.case_id)
    groups = [ids for ids in by_hash.values() if len(ids) > 1]
    for ids in groups:
        log.warning("BraTS data: cases %s hold identical images (one scan under several ids leaks between splits)",
                    ", ".join(ids))
    return groups


def _cached_arrays_intact(cache_dir: str, case_id: str, meta: dict) -> bool:
    """The case's cached image (and seg) files are whole and of the cropped shape (else the case is decoded again)."""
    crop = tuple(meta.get("crop_shape", ()))
    ok = io.npy_intact(os.path.join(cache_dir, f"{case_id}_image.npy"), crop + (4,))
    if ok and meta.get("has_seg"):
        ok = io.npy_intact(os.path.join(cache_dir, f"{case_id}_seg.npy"), crop)
    if not ok:
        log.warning("%s: cached arrays of %s are missing or truncated; decoding the case again", cache_dir, case_id)
    return ok


def prepare_case(case_dir: str, cache_root: str, gaze_dir: str | None, readers: str, sigma: float,
                 survival: dict) -> CaseRecord:
    """Reads, crops, normalises and caches one case (reusing the cache when the source files are unchanged)."""
    case_id = os.path.basename(os.path.normpath(case_dir))
    gaze_file = brats.gaze_path(gaze_dir, case_id) if gaze_dir else None
    cache_dir = os.path.join(cache_root, "cases")
    os.makedirs(cache_dir, exist_ok=True)
    meta_path = os.path.join(cache_dir, f"{case_id}.json")
    key = _cache_key(case_dir, gaze_file)
    meta = None
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = None  # a cut metadata file: decode the case again
        if meta is not None and (meta.get("key") != key or not _cached_arrays_intact(cache_dir, case_id, meta)):
            meta = None
    if meta is None:
        image, seg, meta = preprocess_case(case_dir)
        meta["key"] = key
        io.save_npy(os.path.join(cache_dir, f"{case_id}_image.npy"), image)
        if seg is not None:
            io.save_npy(os.path.join(cache_dir, f"{case_id}_seg.npy"), seg)
        io.write_json(meta_path, meta, indent=None)
    fixations = brats.read_fixations(gaze_file, shape=meta["shape"]) if gaze_file else None
    survival_class = survival.get(case_id, {}).get("survival_class", -1)
    return make_record(case_id, meta, fixations, readers, sigma, survival_class, cache_dir)
