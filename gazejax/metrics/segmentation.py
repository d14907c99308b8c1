"""BraTS segmentation metrics (Dice, HD95) and the label <-> region conversions, in the BraTS challenge convention.

Labels: 0 background, 1 NCR/NET, 2 edema, 4 enhancing tumour. Regions: ET = {4}, TC = {1, 4}, WT = {1, 2, 4};
model outputs are the three region sigmoids in channel order [ET, TC, WT].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

BRATS_LABELS = (0, 1, 2, 4)
REGIONS = ("ET", "TC", "WT")  # channel order of region one-hots and of model outputs
_REGION_LABELS = {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}


def _as_mask(x: np.ndarray, name: str, func: str) -> np.ndarray:
    """Returns `x` as a bool array; accepts bool or integer 0/1 arrays, rejects floats (threshold them first)."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{func}: {name} must be a bool (or 0/1 integer) mask, got dtype {x.dtype}; "
                         "threshold probabilities first")
    return x != 0


def _mask_pair(pred: np.ndarray, gt: np.ndarray, func: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _as_mask(pred, "pred", func), _as_mask(gt, "gt", func)
    if pred.shape != gt.shape:
        raise ValueError(f"{func}: pred shape {pred.shape} != gt shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2 |P & G| / (|P| + |G|) of two bool masks of the same shape (any ndim).

    Both masks empty -> 1.0 (BraTS convention); exactly one empty -> 0.0.
    """
    pred, gt = _mask_pair(pred, gt, "dice")
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: mask XOR its erosion with the connectivity-1 structure (voxels outside count as 0)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def _crop_box(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of pred | gt, padded by `margin` voxels and clipped to the volume."""
    coords = np.nonzero(pred | gt)
    return tuple(slice(max(int(c.min()) - margin, 0), min(int(c.max()) + 1 + margin, n))
                 for c, n in zip(coords, pred.shape))


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel of `from_surface` to the nearest voxel of `to_surface`."""
    dist = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return dist[from_surface]


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (ndim,) or not np.all(spacing > 0):
        raise ValueError(f"hd95: spacing must be {ndim} positive numbers, got {spacing.tolist()}")
    return spacing


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the volume in mm, sqrt(sum((shape * spacing)^2)); 373.13 for 240x240x155 at 1 mm."""
    return float(np.sqrt(np.sum((np.asarray(shape, np.float64) * np.asarray(spacing, np.float64)) ** 2)))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), crop: bool = True) -> float:
    """95th-percentile Hausdorff distance in mm between two bool masks (the medpy `hd95` definition).

    Surfaces are mask XOR binary_erosion(mask) with the connectivity-1 structure; the directed distances from each
    surface to the other (scipy `distance_transform_edt` with `sampling=spacing`) are pooled over both directions
    and their 95th percentile taken with numpy's default linear interpolation.
    Conventions: both masks empty -> 0.0; exactly one empty -> the volume's diagonal in mm,
    sqrt(sum((shape * spacing)^2)) (373.13 for 240x240x155 at 1 mm).

    With `crop=True` the computation runs inside the bounding box of pred | gt padded by one voxel. This is exact,
    not an approximation: erosion treats voxels outside the array as 0, and every voxel outside the box is 0 in
    both masks; all surface voxels (the only EDT targets and the only query points) lie inside the box, so each
    nearest-surface distance is the same as in the full volume.

    Args:
      pred, gt: bool masks of the same shape, e.g. [X, Y, Z].
      spacing: voxel size in mm per axis (len == ndim).
      crop: compute inside the padded bounding box (True) or over the whole volume (False); same result.
    """
    pred, gt = _mask_pair(pred, gt, "hd95")
    spacing = _check_spacing(spacing, pred.ndim)
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return 0.0
    if pred_empty or gt_empty:
        return volume_diagonal(pred.shape, spacing)
    if crop:
        box = _crop_box(pred, gt)
        pred, gt = pred[box], gt[box]
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    distances = np.concatenate([_directed_distances(pred_surface, gt_surface, spacing),
                                _directed_distances(gt_surface, pred_surface, spacing)])
    return float(np.percentile(distances, 95))


def _check_labels(labels: np.ndarray, func: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{func}: labels must be integers in {BRATS_LABELS}, got dtype {labels.dtype}")
    # Range check + one comparison instead of np.unique, which sorts all 9M voxels of a BraTS volume.
    if labels.size and (labels.min() < 0 or labels.max() > 4 or np.any(labels == 3)):
        bad = sorted(set(np.unique(labels).tolist()) - set(BRATS_LABELS))
        raise ValueError(f"{func}: labels contain values {bad} outside the BraTS labels {BRATS_LABELS}")
    return labels


def brats_regions(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Label volume [X, Y, Z] (values 0, 1, 2, 4) -> {"ET": {4}, "TC": {1, 4}, "WT": {1, 2, 4}} bool masks."""
    labels = _check_labels(labels, "brats_regions")
    return {name: np.isin(labels, values) for name, values in _REGION_LABELS.items()}


def brats_scores(pred_labels: np.ndarray, gt_labels: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Dice and HD95 (mm) per BraTS region of two label volumes [X, Y, Z].

    Returns {"dice_ET", "dice_TC", "dice_WT", "hd95_ET", "hd95_TC", "hd95_WT"} as floats, with the empty-mask
    conventions of `dice` and `hd95`.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"brats_scores: pred shape {pred_labels.shape} != gt shape {gt_labels.shape}")
    pred_regions, gt_regions = brats_regions(pred_labels), brats_regions(gt_labels)
    scores = {f"dice_{r}": dice(pred_regions[r], gt_regions[r]) for r in REGIONS}
    scores.update({f"hd95_{r}": hd95(pred_regions[r], gt_regions[r], spacing) for r in REGIONS})
    return scores


def labels_from_regions(et: np.ndarray, tc: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """Region masks (bool, e.g. thresholded sigmoids [X, Y, Z]) -> uint8 labels: ET -> 4, TC \\ ET -> 1, WT \\ TC -> 2.

    Written WT first, then TC, then ET, so each later (inner) region overwrites the outer one. The nesting
    ET c TC c WT is not enforced: a voxel in ET is 4 even if the TC/WT channels missed it.
    """
    et, tc, wt = (_as_mask(m, n, "labels_from_regions") for m, n in ((et, "et"), (tc, "tc"), (wt, "wt")))
    if not et.shape == tc.shape == wt.shape:
        raise ValueError(f"labels_from_regions: region shapes differ: {et.shape}, {tc.shape}, {wt.shape}")
    labels = np.zeros(et.shape, dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    return labels


def labels_to_regions_onehot(labels: np.ndarray) -> np.ndarray:
    """Label volume [...] -> float32 region targets [..., 3] in channel order [ET, TC, WT]."""
    regions = brats_regions(labels)
    return np.stack([regions[r] for r in REGIONS], axis=-1).astype(np.float32)
