"""2D augmentation of radiographs: one sampled affine warp (random resized crop, rotation, optional flips) applied
together to the image, gaze maps and organ masks at any grid resolution, and to fixation points; brightness and
contrast on the image only.

Coordinates follow `gazejax.data.gaze`: continuous (row, col) with pixel i centred at i, covering [i - 0.5, i + 0.5]. An
array of shape [h, w] covers the same extent as the image [H, W] it belongs to: its cell m is centred at image
coordinate (m + 0.5) * H / h - 0.5 per axis, so a coarse gaze map and the image are warped consistently.

The warp (output image coordinates o -> input image coordinates p, what `scipy.ndimage.affine_transform` wants):
    p = c + Rot(-angle) @ diag(crop_h / H, crop_w / W) @ Flip @ (o - o_c)
with c the crop centre in the input, o_c = ((H - 1) / 2, (W - 1) / 2) the output centre, Rot(a) = [[cos a, -sin a],
[sin a, cos a]] on (row, col) (a positive angle turns the content counter-clockwise on screen, rows pointing down),
Flip = diag(+-1, +-1). The crop is the box `size` around `center`, turned with the rotation: unturned it lies
inside the image; corners the rotation brings in from outside the image are zero. Points move by the inverse map.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

_TRIES = 10  # rejection-sampling attempts for a crop that fits, as torchvision's RandomResizedCrop


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges (defaults: GazAT Sec. 3, "random crop (0.8-1.0), rotation (+-10), brightness/contrast
    adjustments (+-0.2)"; flips off because chest anatomy is lateralised).

    scale: crop area as a share of the image area; aspect: crop aspect relative to the image's (1 = no distortion;
    sampled log-uniformly, as torchvision's ratio); rotation: max |angle| in degrees; flip_lr / flip_ud:
    probabilities; brightness / contrast: factors drawn from [1 - v, 1 + v] (torchvision ColorJitter semantics).
    """

    scale: tuple[float, float] = (0.8, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 10.0
    flip_lr: float = 0.0
    flip_ud: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"AugmentConfig.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"AugmentConfig.aspect must satisfy 0 < lo <= hi, got {self.aspect}")
        for name in ("flip_lr", "flip_ud"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"AugmentConfig.{name} is a probability, got {getattr(self, name)}")
        for name in ("rotation", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "AugmentConfig":
        """From a dict / ConfigDict of the fields above (missing fields keep their defaults; unknown -> error)."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown augmentation options {unknown}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class AffineParams:
    """One sampled geometric transform of an image frame `shape` (H, W); see the module docstring.

    center: crop centre (row, col) in input pixels; size: crop (height, width) in input pixels; angle: degrees.
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    size: tuple[float, float]
    angle: float = 0.0
    flip_ud: bool = False
    flip_lr: bool = False

    @classmethod
    def identity(cls, shape: Sequence[int]) -> "AffineParams":
        h, w = (int(s) for s in shape)
        return cls((h, w), ((h - 1) / 2, (w - 1) / 2), (float(h), float(w)))

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(M [2, 2], t [2]) with input = M @ output + t, in image pixel coordinates (row, col)."""
        a = math.radians(self.angle)
        rot_inv = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # Rot(-angle)
        flip = np.array([-1.0 if self.flip_ud else 1.0, -1.0 if self.flip_lr else 1.0])
        m = rot_inv @ np.diag(np.array(self.size) / np.array(self.shape) * flip)
        out_centre = (np.array(self.shape, np.float64) - 1) / 2
        return m, np.array(self.center, np.float64) - m @ out_centre


@dataclasses.dataclass(frozen=True)
class IntensityParams:
    """Brightness and contrast factors (1 = unchanged)."""

    brightness: float = 1.0
    contrast: float = 1.0


def sample_affine(rng: np.random.Generator, shape: Sequence[int], cfg: AugmentConfig) -> AffineParams:
    """Random resized crop + rotation + flips for an image frame `shape` (H, W).

    Scale and log-aspect are redrawn until the crop fits the image (at most 10 tries, then the sampled crop is
    shrunk to fit); the centre is uniform over the positions that keep the crop inside [-0.5, H - 0.5].
    """
    h, w = (int(s) for s in shape)
    log_lo, log_hi = math.log(cfg.aspect[0]), math.log(cfg.aspect[1])
    for _ in range(_TRIES):
        scale, aspect = rng.uniform(*cfg.scale), math.exp(rng.uniform(log_lo, log_hi))
        fh, fw = math.sqrt(scale / aspect), math.sqrt(scale * aspect)  # crop size as shares of H and W
        if fh <= 1 and fw <= 1:
            break
    fh, fw = min(fh, 1.0), min(fw, 1.0)
    size = (fh * h, fw * w)
    center = tuple(rng.uniform(-0.5 + s / 2, n - 0.5 - s / 2) if s < n else (n - 1) / 2
                   for s, n in zip(size, (h, w)))
    return AffineParams(shape=(h, w), center=center, size=size, angle=float(rng.uniform(-1, 1) * cfg.rotation),
                        flip_ud=bool(rng.random() < cfg.flip_ud), flip_lr=bool(rng.random() < cfg.flip_lr))


def sample_intensity(rng: np.random.Generator, cfg: AugmentConfig) -> IntensityParams:
    """Brightness and contrast factors drawn uniformly from [1 - v, 1 + v]."""
    return IntensityParams(brightness=float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
                           contrast=float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)))


def grid_affine(params: AffineParams, grid_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(M [2, 2], t [2]): input = M @ output + t in the cell coordinates of an array `grid_shape` [h, w, ...]
    covering the image's extent: `params.matrix()` conjugated by the grid -> image map p = d * m + (d - 1) / 2
    (d = image / grid size per axis, cell centres as in the module docstring)."""
    m, t = params.matrix()
    d = np.array(params.shape, np.float64) / np.array(grid_shape[:2], np.float64)
    e = (d - 1) / 2
    return m * d[None, :] / d[:, None], (m @ e + t - e) / d


def warp(array: np.ndarray, params: AffineParams, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Warp `array` [h, w] or [h, w, C] (any grid covering the image extent) by `params`; same shape and dtype.

    order=1 (bilinear) for images and gaze maps, order=0 (nearest) for masks and labels. A sample inside the
    array's extent [-0.5, n - 0.5] takes the interpolated value (the edge pixel's where it lies past the outermost
    centre: pixels cover their whole cell); a sample outside it is `cval`.
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"warp: array must be [h, w] or [h, w, C], got shape {array.shape}")
    m, t = grid_affine(params, array.shape)
    src_coords = np.einsum("ij,jhw->ihw", m, np.indices(array.shape[:2], dtype=np.float64)) + t[:, None, None]
    inside = np.all((src_coords >= -0.5) & (src_coords <= np.array(array.shape[:2])[:, None, None] - 0.5), axis=0)
    if array.ndim == 3:  # the channel axis maps to itself exactly (integer coordinates, no interpolation)
        m3 = np.eye(3)
        m3[:2, :2] = m
        m, t, inside = m3, np.append(t, 0.0), inside[..., None]
    src = array.astype(np.float32) if array.dtype == bool else array
    out = ndimage.affine_transform(src, m, offset=t, output_shape=array.shape, order=order, mode="nearest",
                                   prefilter=False)
    out = np.where(inside, out, np.asarray(cval, out.dtype))
    return out.astype(array.dtype) if array.dtype != bool else out > 0.5


def map_points(points_yx: np.ndarray, params: AffineParams, grid_shape: Sequence[int] | None = None) -> np.ndarray:
    """Points [N, 2] (row, col) in the input frame -> the same points in the warped frame (float32).

    grid_shape: the points are cell coordinates of an array of that shape (default: image pixels)."""
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    m, t = grid_affine(params, params.shape if grid_shape is None else grid_shape)
    return (np.linalg.solve(m, (pts - t).T).T).astype(np.float32)


def map_sigma(sigma_yx: np.ndarray, params: AffineParams) -> np.ndarray:
    """Per-axis Gaussian widths [N, 2] (or [2]) in image pixels -> widths in the warped frame.

    A Gaussian with covariance diag(s^2) becomes L diag(s^2) L^T with L the forward linear map; the result is the
    square root of its diagonal: exact for isotropic sigma under rotation + uniform zoom and for any sigma without
    rotation; otherwise the axis-aligned Gaussian with the same per-axis spread (the renderer has no tilt).
    """
    sigma = np.asarray(sigma_yx, np.float64)
    forward = np.linalg.inv(params.matrix()[0])
    return np.sqrt((sigma[..., None, :] ** 2 * forward**2).sum(-1)).astype(np.float32)


def adjust_intensity(image: np.ndarray, params: IntensityParams) -> np.ndarray:
    """Brightness (x b), then contrast (blend with the image mean by factor c), clipped to [0, 1] after each step
    (torchvision `adjust_brightness` / `adjust_contrast`); float32."""
    out = np.clip(np.asarray(image, np.float32) * params.brightness, 0.0, 1.0)
    mean = float(out.mean())
    return np.clip((out - mean) * params.contrast + mean, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass
class Augmented:
    """Result of `augment`: warped arrays (same keys as given), moved points/sigma and the sampled parameters."""

    image: np.ndarray
    maps: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    points: np.ndarray | None
    sigma: np.ndarray | None
    affine: AffineParams
    intensity: IntensityParams


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None, *,
            maps: Mapping[str, np.ndarray] | None = None, masks: Mapping[str, np.ndarray] | None = None,
            points: np.ndarray | None = None, sigma: np.ndarray | None = None,
            params: tuple[AffineParams, IntensityParams] | None = None) -> Augmented:
    """One random geometric transform applied to everything, intensity jitter to the image only.

    image [H, W] or [H, W, C] in [0, 1]; maps: name -> [h, w] (bilinear, any grid); masks: name -> [h, w] or
    [h, w, K] (nearest); points [N, 2] (row, col) and sigma [N, 2] in image pixels; `params` replaces sampling
    (e.g. to replay a transform).
    """
    cfg = cfg or AugmentConfig()
    image = np.asarray(image)
    affine, intensity = params or (sample_affine(rng, image.shape[:2], cfg), sample_intensity(rng, cfg))
    return Augmented(
        image=adjust_intensity(warp(image, affine, order=1), intensity),
        maps={k: warp(v, affine, order=1) for k, v in (maps or {}).items()},
        masks={k: warp(v, affine, order=0) for k, v in (masks or {}).items()},
        points=None if points is None else map_points(points, affine),
        sigma=None if sigma is None else map_sigma(sigma, affine), affine=affine, intensity=intensity)
