"""Per-case numpy preprocessing and augmentation of 3D multi-modal volumes, as in open_brats2020 (Henry et al.).

Volumes are channels-last `[X, Y, Z, C]`; labels `[X, Y, Z]`; gaze points `[N, 3]` float voxel coordinates in array
index order. Every spatial transform that moves voxels moves the points the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Bbox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def crop_to_nonzero(image: np.ndarray, seg: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, Bbox]:
    """Crops `image` [X, Y, Z, C] (and `seg` [X, Y, Z]) to the box of voxels non-zero in any modality.

    Returns (image, seg, bbox) with bbox = ((x0, x1), (y0, y1), (z0, z1)), half-open, so that
    `image[x0:x1, y0:y1, z0:z1]` is the crop and a point moves by `p - (x0, y0, z0)`. An all-zero image is kept
    whole.
    """
    mask = np.any(image != 0, axis=-1)
    bbox = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        bbox.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[axis]))
    window = tuple(slice(lo, hi) for lo, hi in bbox)
    return image[window], (None if seg is None else seg[window]), tuple(bbox)


def normalize_intensity(image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0
                        ) -> np.ndarray:
    """Per modality of `image` [X, Y, Z, C]: clip brain (non-zero) voxels to their [1st, 99th] percentile, then
    min-max to [0, 1]; background stays 0. A modality with constant brain intensity maps its brain voxels to 0.

    Same mapping as open_brats2020's `irm_min_max_preprocess` (which clips the whole volume, so its background
    lands on the low percentile and maps to 0 as here), but applied channel by channel.
    """
    out = np.zeros(image.shape, dtype=np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        brain = channel != 0
        if not brain.any():
            continue
        values = channel[brain].astype(np.float64)
        low, high = np.percentile(values, [low_percentile, high_percentile])
        scale = 1.0 / (high - low) if high > low else 0.0
        out[..., c][brain] = ((np.clip(values, low, high) - low) * scale).astype(np.float32)
    return out


def _window(arrays: Sequence[np.ndarray | None], offset: np.ndarray, size: Sequence[int]) -> list:
    """Takes old indices [offset, offset + size) of each array's first three axes, zero-padding outside."""
    out = []
    for array in arrays:
        if array is None:
            out.append(None)
            continue
        dims = np.asarray(array.shape[:3])
        pad_lo = np.maximum(0, -offset)
        pad_hi = np.maximum(0, offset + np.asarray(size) - dims)
        if pad_lo.any() or pad_hi.any():
            widths = list(zip(pad_lo.tolist(), pad_hi.tolist())) + [(0, 0)] * (array.ndim - 3)
            array = np.pad(array, widths)
        start = offset + pad_lo
        out.append(array[tuple(slice(s, s + n) for s, n in zip(start.tolist(), size))])
    return out


def _spatial_dims(arrays: Sequence[np.ndarray | None]) -> np.ndarray:
    shapes = {tuple(a.shape[:3]) for a in arrays if a is not None}
    if len(shapes) != 1:
        raise ValueError(f"arrays must share their first three (spatial) dimensions, got {sorted(shapes)}")
    return np.asarray(shapes.pop())


def random_pad_crop(arrays: Sequence[np.ndarray | None], size: Sequence[int], rng: np.random.Generator
                    ) -> tuple[list, np.ndarray]:
    """Zero-pads axes shorter than `size` at a random position and crops a random `size` window of longer ones.

    arrays: [X, Y, Z, ...] each (None passes through). Returns (arrays, offset int64 [3]) with
    new_index = old_index - offset (negative components where padding was added), for moving gaze points.
    """
    dims, size = _spatial_dims(arrays), np.asarray(size, dtype=np.int64)
    slack = np.abs(dims - size)
    shift = rng.integers(0, slack + 1)
    offset = np.where(dims >= size, shift, -shift).astype(np.int64)
    return _window(arrays, offset, size.tolist()), offset


def center_pad_crop(arrays: Sequence[np.ndarray | None], size: Sequence[int]) -> tuple[list, np.ndarray]:
    """Deterministic `random_pad_crop` for evaluation: the window (or the padding) is centred."""
    dims, size = _spatial_dims(arrays), np.asarray(size, dtype=np.int64)
    offset = np.where(dims >= size, (dims - size) // 2, -((size - dims) // 2)).astype(np.int64)
    return _window(arrays, offset, size.tolist()), offset


def pad_to_multiple(image: np.ndarray, multiple: int | Sequence[int]
                    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Zero-pads the end of the three spatial axes of `image` [X, Y, Z, ...] up to a multiple of `multiple` (as
    open_brats2020 does before inference). Returns (padded, pads) with pads = ((0, px), (0, py), (0, pz)); undo with
    `unpad`."""
    multiple = np.broadcast_to(np.asarray(multiple, dtype=np.int64), (3,))
    dims = np.asarray(image.shape[:3])
    extra = (-dims) % multiple
    pads = tuple((0, int(e)) for e in extra)
    return np.pad(image, pads + ((0, 0),) * (image.ndim - 3)), pads


def unpad(array: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Inverse of `pad_to_multiple` on the first three axes."""
    return array[tuple(slice(lo, array.shape[a] - hi) for a, (lo, hi) in enumerate(pads))]


def _brain_std(image: np.ndarray, positive: bool = False, ddof: int = 0) -> np.ndarray:
    """Standard deviation of the brain voxels of each channel of [X, Y, Z, C] ([C]; 0 for an empty channel).

    Brain voxels are the non-zero ones, or with `positive` the voxels > 0 (open_brats2020's `x > 0`)."""
    brain = image > 0 if positive else image != 0
    count = brain.sum(axis=(0, 1, 2))
    safe = np.maximum(count - ddof, 1)
    mean = np.where(brain, image, 0).sum(axis=(0, 1, 2), dtype=np.float64) / np.maximum(count, 1)
    var = np.where(brain, (image - mean) ** 2, 0).sum(axis=(0, 1, 2), dtype=np.float64) / safe
    return np.sqrt(var).astype(np.float32)


AUGMENT_SCHEMES = ("open_brats2020", "per_step")


def augment(image: np.ndarray, seg: np.ndarray | None, points: np.ndarray | None, rng: np.random.Generator,
            p: float = 0.5, scheme: str = "per_step"
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Intensity and geometric augmentation of `image` [X, Y, Z, C]; `seg` [X, Y, Z] and `points` [N, 3] (voxel
    coordinates, array order) follow every geometric step exactly. Two schemes (`AUGMENT_SCHEMES`):

    "open_brats2020" (its `DataAugmenter`): with probability `p` the whole block runs, else nothing:
      1. scale the image by one scalar U(0.9, 1.1);
      2. add Gaussian noise of 0.1 x the std (ddof 1) of each channel's voxels > 0 to every voxel;
      3. swap two distinct spatial axes (a uniform pair; only among equal sides, so crops keep their shape);
      4. flip one spatial axis (uniform).
    "per_step" (gazejax's earlier variant): each step by itself with probability `p`: 1. one U(0.9, 1.1) scale
      per channel; 2. noise as above (std over non-zero voxels, ddof 0); 3. as above; 4. flip each spatial axis
      with probability 1/2 (possibly none).
    """
    if scheme not in AUGMENT_SCHEMES:
        raise ValueError(f"transforms3d.augment: unknown scheme {scheme!r}; expected one of {AUGMENT_SCHEMES}")
    image = np.asarray(image, dtype=np.float32)
    points = None if points is None else np.array(points, dtype=np.float64, copy=True)
    if scheme == "open_brats2020":
        if rng.random() >= p:
            return np.ascontiguousarray(image), (None if seg is None else np.ascontiguousarray(seg)), points
        image = image * np.float32(rng.uniform(0.9, 1.1))
        std = _brain_std(image, positive=True, ddof=1)
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * (0.1 * std)
        image, seg, points = _swap_axes(image, seg, points, rng, required=True)
        image, seg, points = _flip(image, seg, points, (int(rng.integers(3)),))
    else:
        if rng.random() < p:
            image = image * rng.uniform(0.9, 1.1, size=image.shape[-1]).astype(np.float32)
        if rng.random() < p:
            std = _brain_std(image)
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * (0.1 * std)
        if rng.random() < p:
            image, seg, points = _swap_axes(image, seg, points, rng, required=False)
        if rng.random() < p:
            image, seg, points = _flip(image, seg, points, tuple(int(a) for a in np.flatnonzero(rng.random(3) < 0.5)))
    return np.ascontiguousarray(image), (None if seg is None else np.ascontiguousarray(seg)), points


def _swap_axes(image, seg, points, rng: np.random.Generator, required: bool):
    """Swaps a uniformly drawn pair of equal-length spatial axes (an error when `required` and none exists)."""
    dims = image.shape[:3]
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3) if dims[a] == dims[b]]
    if not pairs:
        if required:
            raise ValueError(f"transforms3d.augment: scheme 'open_brats2020' swaps two spatial axes and needs two "
                             f"equal sides (data.crop_size), got {dims}")
        return image, seg, points
    a, b = pairs[rng.integers(len(pairs))]
    image, seg = np.swapaxes(image, a, b), (None if seg is None else np.swapaxes(seg, a, b))
    if points is not None:
        points[:, [a, b]] = points[:, [b, a]]
    return image, seg, points


def _flip(image, seg, points, axes: tuple[int, ...]):
    """Flips the spatial `axes` (index i -> size - 1 - i) of image, seg and points."""
    if not axes:
        return image, seg, points
    image, seg = np.flip(image, axes), (None if seg is None else np.flip(seg, axes))
    if points is not None:
        sizes = np.asarray(image.shape[:3], dtype=np.float64)
        points[:, axes] = sizes[list(axes)] - 1.0 - points[:, axes]
    return image, seg, points
