"""Chest X-ray records (EGD-CXR, REFLACX) and their resized-image cache.

Each DICOM is read once, padded to the target aspect and area-resampled (`geometry.ResizeTransform.fit`), and stored
as float32 .npy (organ masks as bool .npy) under the cache folder; records memory-map those files. Fixations are
points (row, col) in the resized frame.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np

from gazejax.data import dicom, io
from gazejax.data.cxr import egd_cxr, reflacx
from gazejax.data.cxr import labels as cxr_labels
from gazejax.data.errors import DataError
from gazejax.data.geometry import ResizeTransform

CACHE_VERSION = 1  # bump when the cached arrays change meaning
DATASETS = ("egd_cxr", "reflacx")


@dataclasses.dataclass
class CXRCase:
    """A cached, resized radiograph with its fixations (resized frame), targets and organ masks.

    points_yx [N, 2] float32 (row, col) and durations [N] s; sigma_yx [N, 2] the data set's per-fixation sigma
    (REFLACX: 1 degree of visual angle) in resized pixels, or None; scale_yx [2] resized pixels per source pixel;
    label int32 [] / float32 [L] and label_mask bool [] / [L] (`cxr_labels.make_labels`).
    """

    dicom_id: str
    patient_id: str
    study_id: str
    image_file: str
    image_shape: tuple[int, int]
    source_shape: tuple[int, int]
    points_yx: np.ndarray
    durations: np.ndarray
    sigma_yx: np.ndarray | None
    scale_yx: np.ndarray
    label: np.ndarray
    label_mask: np.ndarray
    mask_names: tuple[str, ...] = ()
    has_masks: np.ndarray | None = None
    masks_file: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_gaze(self) -> bool:
        return len(self.points_yx) > 0

    def image(self) -> np.ndarray:
        """float32 [H, W] in [0, 1] (memory-mapped)."""
        return np.load(self.image_file, mmap_mode="r")

    def masks(self) -> np.ndarray | None:
        """bool [H, W, K] in `mask_names` order (all False where `has_masks` is False), or None."""
        return None if self.masks_file is None else np.load(self.masks_file, mmap_mode="r")


def reader_for(dataset: str, root: str, mimic_root: str, options: Mapping[str, Any] | None):
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    cls = egd_cxr.EGDCXR if dataset == "egd_cxr" else reflacx.REFLACX
    return cls(root, mimic_root, **dict(options or {}))


def _stat(path: str, what: str) -> list:
    try:
        st = os.stat(path)
    except OSError as err:
        raise DataError(f"{path}: cannot stat {what} ({err.strerror}); the cache is keyed on the source file") \
            from None
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _cached(rec: cxr_labels.CXRRecord, reader, folder: str, size: tuple[int, int], pad: str) -> dict:
    """Resize (and cache) one record's image and organ masks; returns the cache entry's metadata."""
    names = tuple(rec.masks)  # EGD-CXR's organs (a PNG path, or None where missing); REFLACX: none
    organs = [o for o in names if rec.masks[o]]
    sources = [_stat(rec.image_path, "DICOM")] + [_stat(rec.masks[o], f"{o} mask") for o in organs]
    key = hashlib.sha1(json.dumps([CACHE_VERSION, list(size), pad, sources]).encode()).hexdigest()[:16]
    stem = os.path.join(folder, rec.dicom_id)
    try:
        with open(stem + ".json") as f:
            meta = json.load(f)
        if meta["key"] == key and io.npy_intact(stem + ".npy", tuple(size)) and (
                not names or io.npy_intact(stem + "_masks.npy", tuple(size) + (len(names),))):
            return meta
    except (OSError, ValueError, KeyError):
        pass
    image = dicom.read(rec.image_path)
    tf = ResizeTransform.fit(image.shape, size, pad=pad)
    io.save_npy(stem + ".npy", tf.apply(image))
    if names:
        stack = np.zeros(tuple(size) + (len(names),), bool)
        for k, o in enumerate(names):
            if o in organs:
                mask = reader.load_mask(rec, o)
                if mask.shape != image.shape:
                    raise DataError(f"{rec.masks[o]}: mask shape {mask.shape} != image shape {image.shape}")
                stack[..., k] = tf.map_mask(mask)
        io.save_npy(stem + "_masks.npy", stack)
    meta = {"key": key, "source_shape": list(image.shape), "mask_names": list(names),
            "has_masks": [o in organs for o in names]}
    io.write_json(stem + ".json", meta, indent=None)
    return meta


def _case(rec: cxr_labels.CXRRecord, meta: dict, folder: str, size: tuple[int, int], pad: str, label, mask
          ) -> CXRCase:
    tf = ResizeTransform.fit(tuple(meta["source_shape"]), size, pad=pad)
    scale, offset = tf.as_affine("yx")
    fix = rec.fixations
    stem = os.path.join(folder, rec.dicom_id)
    names = tuple(meta["mask_names"])
    return CXRCase(
        dicom_id=rec.dicom_id, patient_id=rec.patient_id, study_id=rec.study_id, image_file=stem + ".npy",
        image_shape=tuple(size), source_shape=tuple(meta["source_shape"]),
        points_yx=(fix.points_yx * scale + offset).astype(np.float32), durations=fix.durations.astype(np.float32),
        sigma_yx=None if fix.sigma is None else (fix.sigma_yx * scale).astype(np.float32),
        scale_yx=scale.astype(np.float32), label=label, label_mask=mask, mask_names=names,
        has_masks=np.asarray(meta["has_masks"], bool) if names else None,
        masks_file=stem + "_masks.npy" if names else None, meta=dict(rec.meta))


def prepare_records(dataset: str, root: str, mimic_root: str, cache_dir: str, image_size: Sequence[int], *,
                    label_set: str = "3class", label_policy: Any = None, pad: str = "symmetric",
                    reader_options: Mapping[str, Any] | None = None, num_workers: int = 4) -> list[CXRCase]:
    """Read, resize and cache every image of an EGD-CXR or REFLACX copy; records in the reader's order.

    image_size (H, W): each image is padded (`pad`: "symmetric" or "end") to that aspect, then area-resampled.
    Cache: `<cache_dir>/<dataset>_<H>x<W>_<pad>/<dicom_id>.{npy,json}` (+ `_masks.npy`), keyed on the DICOM's and
    mask PNGs' path, size and mtime plus the resize settings: a changed source is re-read, an unchanged one never
    decoded again. The sources must exist (a deleted DICOM is a DataError, not a silent cache hit). Labels:
    `make_labels(label_set, label_policy)`; REFLACX has no "3class" labels. `reader_options` go to the reader
    (e.g. EGD-CXR source="eye_gaze", REFLACX group_by="reading"). Threads decode DICOMs in parallel.
    """
    size = tuple(int(s) for s in image_size)
    reader = reader_for(dataset, root, mimic_root, reader_options)
    records = reader.records()
    labels, masks = cxr_labels.make_labels(records, label_set, label_policy)
    folder = os.path.join(cache_dir, f"{dataset}_{size[0]}x{size[1]}_{pad}")
    os.makedirs(folder, exist_ok=True)
    unique = list({r.dicom_id: r for r in records}.values())  # REFLACX per-reading records share an image
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        metas = dict(zip([r.dicom_id for r in unique],
                         pool.map(lambda r: _cached(r, reader, folder, size, pad), unique)))
    return [_case(r, metas[r.dicom_id], folder, size, pad, labels[i], masks[i]) for i, r in enumerate(records)]
