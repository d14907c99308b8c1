"""Where a model looks, scored against anatomy or findings: Eq. 12's peak-in-organ hit (Zhu et al., GG-CAM) with
the EGD-CXR organ masks of each class (heart for CHF, lungs for pneumonia), and the pointing game (a map's peak
within a tolerance of a finding). numpy in, numpy / floats out.
"""
from __future__ import annotations

from typing import Literal, Mapping

import numpy as np

MASK_SCALINGS = ("area", "nearest", "any")
ORGANS = {1: ("mediastanum",), 2: ("left_lung", "right_lung")}  # Eq. 12's S^Y: heart (CHF), lungs (pneumonia)


def _overlap_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]`: the fraction of output cell i (span [i, i+1) * n_in / n_out pixels) covered by pixel u."""
    step = n_in / n_out
    lo = np.arange(n_out)[:, None] * step
    u = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + step, u + 1) - np.maximum(lo, u), 0.0, None)
    return overlap / step


def scale_mask(mask: np.ndarray, grid: tuple[int, int], mode: str = "area") -> np.ndarray:
    """Organ masks `[B, H, W]` -> bool `[B, h, w]` on the CAM grid (Eq. 12's "coordinates in S^Y are scaled").

    CAM cell (i, j) covers the image rectangle [i H/h, (i+1) H/h) x [j W/w, (j+1) W/w) (any size ratio).
      "area" (default): the cell is in the organ when the mask covers at least half of that rectangle's area
        (exact fractional overlaps; the area-resized mask thresholded at 0.5).
      "nearest": the mask's value at the pixel holding the cell centre, floor((i + 0.5) H / h).
      "any": the cell holds at least one mask pixel, i.e. the image of S^Y under the coordinate scaling
        (u, v) -> (floor(u h / H), floor(v w / W)); the most lenient reading.
    """
    if mode not in MASK_SCALINGS:
        raise ValueError(f"localization.py: mask scaling must be one of {MASK_SCALINGS}, got {mode!r}")
    mask = np.asarray(mask).astype(bool)
    (height, width), (h, w) = mask.shape[1:3], grid
    if mode == "nearest":
        rows = np.floor((np.arange(h) + 0.5) * height / h).astype(int)
        cols = np.floor((np.arange(w) + 0.5) * width / w).astype(int)
        return mask[:, rows][:, :, cols]
    coverage = np.einsum("iu,buv,jv->bij", _overlap_matrix(height, h), mask.astype(np.float64),
                         _overlap_matrix(width, w))
    tol = 1e-9  # overlaps are sums of float fractions
    return coverage >= 0.5 - tol if mode == "area" else coverage > tol


def interpretability_hit(cam: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                         mode: Literal["area", "nearest", "any"] = "area") -> np.ndarray:
    """Eq. 12 (Zhu et al.): whether argmax_ij Omega^Y_ij lies inside the organ mask S^Y of the true class Y.

    Args:
      cam: Omega `[B, h, w, C]`.
      labels: `[B]` integer true classes.
      masks: `[B, H, W]` bool, each image's S^Y (the caller picks the organ: heart for cardiomegaly, lungs for
        pneumonia), or `[B, H, W, C]` with one mask per class, of which channel Y is used. Any H, W: scaled to the
        CAM grid by `scale_mask(mode)`.
      mode: the mask scaling, see `scale_mask` ("area" by default).

    Returns:
      bool numpy `[B]`. The peak is the first maximum in row-major order (np.argmax). The paper reports the
      fraction of hits over the cardiomegaly and pneumonia test images; select those before averaging.
    """
    cam, labels, masks = np.asarray(cam, np.float32), np.asarray(labels).astype(int), np.asarray(masks)
    if cam.ndim != 4 or labels.shape != cam.shape[:1]:
        raise ValueError(f"localization.py: interpretability_hit expects cam [B, h, w, C] and labels [B], got "
                         f"{cam.shape} and {labels.shape}")
    batch, h, w, classes = cam.shape
    if masks.ndim == 4:
        if masks.shape[-1] != classes:
            raise ValueError(f"localization.py: per-class masks have {masks.shape[-1]} channels, CAM {classes}")
        masks = masks[np.arange(batch), ..., labels]
    if masks.ndim != 3 or masks.shape[0] != batch:
        raise ValueError(f"localization.py: masks must be [B, H, W] or [B, H, W, C] with B={batch}, "
                         f"got {masks.shape}")
    omega_y = cam[np.arange(batch), ..., labels]  # [B, h, w]
    peak = np.argmax(omega_y.reshape(batch, -1), axis=1)
    inside = scale_mask(masks, (h, w), mode).reshape(batch, -1)
    return inside[np.arange(batch), peak]


def organ_masks(batch: Mapping[str, np.ndarray], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 12's S^Y per image: (bool `[B, H, W]`, bool `[B]` defined). Defined for CHF (heart = "mediastanum")
    and pneumonia (left | right lung) images whose masks exist; Normal images have no S^Y."""
    labels = np.asarray(batch["label"]).astype(int)
    shape = np.asarray(batch["image"]).shape[:3]
    masks, defined = np.zeros(shape, bool), np.zeros(shape[0], bool)
    if "organ_masks" not in batch:
        return masks, defined
    for i, y in enumerate(labels):
        organs = ORGANS.get(int(y), ())
        idx = [names.index(o) for o in organs if o in names]
        if organs and len(idx) == len(organs) and batch["has_organ_masks"][i, idx].all():
            masks[i], defined[i] = batch["organ_masks"][i][..., idx].any(axis=-1), True
    return masks, defined


def pointing_hit(peak_map: np.ndarray, distance: np.ndarray, tolerance: float) -> float:
    """1.0 when the centre of `peak_map`'s maximal cell (mapped to image pixels) lies within `tolerance` pixels of
    the finding (`distance` [H, W] to it), else 0.0; a constant map (no peak, e.g. an all-zero Grad-CAM) misses."""
    if np.ptp(peak_map) == 0:
        return 0.0
    shape = np.array(distance.shape)
    peak = np.array(np.unravel_index(np.argmax(peak_map), peak_map.shape))
    y, x = np.clip(np.round((peak + 0.5) * shape / np.array(peak_map.shape) - 0.5).astype(int), 0, shape - 1)
    return float(distance[y, x] <= tolerance)
