"""Pad-then-resample geometry for radiographs, applied identically to images, masks and fixation coordinates.

Coordinate convention (shared with `gazejax.data.gaze`): continuous pixel coordinates with pixel i centred at i, so
pixel i covers [i - 0.5, i + 0.5]; points are (x, y) = (column, row). A transform pads the [H, W] image to a canvas
[Hc, Wc] (`pad_before` = (top, left) rows/columns of zeros first), then resamples the canvas to [Ho, Wo]:

  - "area": output pixel j averages the canvas over its cell [j*s, (j+1)*s] in edge units, s = Hc/Ho (or Wc/Wo),
    exact box-filter (anti-aliased) resampling for any real ratio. Output pixel j is centred at canvas
    coordinate (j + 0.5) * s - 0.5, hence  new = (old + pad + 0.5) / s - 0.5.
  - "stride": canvas[::d] for an integer d = Hc/Ho (the MT-UNet/GG-CAM "halve the DICOM" subsampling); output
    pixel j is canvas pixel j*d, hence  new = (old + pad) / d.

`as_affine()` returns (scale, offset), both [2], with new = old * scale + offset per axis, in array-axis order (row,
col) like `gazejax.data.gaze` (order="xy" for (x, y) points); `map_points` takes and returns (x, y) points.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_PADS = ("symmetric", "end")
_METHODS = ("area", "stride")


def _pad_before(total: int, pad: str) -> int:
    if pad not in _PADS:
        raise ValueError(f"pad must be one of {_PADS}, got {pad!r}")
    return total // 2 if pad == "symmetric" else 0  # symmetric: the odd extra row/column goes after


def _area_axis(x: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Box-filter resample of `x` along `axis` to `out_len` samples (exact cell averages, float64)."""
    x = np.moveaxis(x, axis, 0).astype(np.float64)
    n = x.shape[0]
    cell = n / out_len
    if cell == int(cell):  # integer factor: block means (exact, and cheaper)
        d = int(cell)
        out = x.reshape((out_len, d) + x.shape[1:]).mean(axis=1)
        return np.moveaxis(out, 0, axis)
    cum = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)], axis=0)
    edges = np.arange(out_len + 1) * cell
    idx = np.minimum(np.floor(edges).astype(np.int64), n - 1)
    frac = (edges - idx)[(slice(None),) + (None,) * (x.ndim - 1)]
    integral = cum[idx] + frac * x[idx]  # piecewise-linear integral of the piecewise-constant signal
    out = (integral[1:] - integral[:-1]) / cell
    return np.moveaxis(out, 0, axis)


@dataclasses.dataclass(frozen=True)
class ResizeTransform:
    """Pad [H, W] to a canvas [Hc, Wc] (zeros, `pad_before`=(top, left)), then resample it to `out_shape`.

    Build with `ResizeTransform.fit` (pad to the output aspect ratio), `ResizeTransform.pad_to` (pad to a fixed
    canvas, e.g. GG-CAM's 3072x2560) or `halve_dicom_resolution`.
    """

    in_shape: tuple[int, int]
    canvas_shape: tuple[int, int]
    out_shape: tuple[int, int]
    pad_before: tuple[int, int] = (0, 0)
    method: str = "area"
    pad_value: float = 0.0

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        for a, b, (lo, name) in zip(self.in_shape, self.canvas_shape, zip(self.pad_before, "HW")):
            if not (0 <= lo and lo + a <= b):
                raise ValueError(f"{name}: image {a} with pad {lo} does not fit canvas {b}")
        if min(self.out_shape) < 1:
            raise ValueError(f"out_shape must be positive, got {self.out_shape}")
        if self.method == "stride" and any(c % o for c, o in zip(self.canvas_shape, self.out_shape)):
            raise ValueError(f"stride needs canvas {self.canvas_shape} divisible by output {self.out_shape}")

    @classmethod
    def fit(cls, in_shape: tuple[int, int], out_shape: tuple[int, int], *, pad: str = "symmetric",
            method: str = "area") -> "ResizeTransform":
        """Pad the shorter side so the canvas has the output's aspect ratio (smallest such canvas), then resample."""
        (h, w), (ho, wo) = in_shape, out_shape
        if h * wo >= w * ho:  # image relatively taller than the output: pad columns
            hc, wc = h, max(w, math.ceil(h * wo / ho - 1e-9))
        else:
            hc, wc = max(h, math.ceil(w * ho / wo - 1e-9)), w
        return cls.pad_to(in_shape, (hc, wc), out_shape, pad=pad, method=method)

    @classmethod
    def pad_to(cls, in_shape: tuple[int, int], canvas_shape: tuple[int, int], out_shape: tuple[int, int], *,
               pad: str = "symmetric", method: str = "area") -> "ResizeTransform":
        """Pad to a fixed canvas (pad="symmetric": centred, odd pixel after; "end": bottom/right), then resample."""
        before = tuple(_pad_before(c - i, pad) for i, c in zip(in_shape, canvas_shape))
        return cls(tuple(in_shape), tuple(canvas_shape), tuple(out_shape), before, method)

    @property
    def cell(self) -> tuple[float, float]:
        """Canvas pixels per output pixel (rows, cols)."""
        return self.canvas_shape[0] / self.out_shape[0], self.canvas_shape[1] / self.out_shape[1]

    def as_affine(self, order: str = "yx") -> tuple[np.ndarray, np.ndarray]:
        """(scale [2], offset [2]) with new = old * scale + offset, per axis (see module docstring).

        order="yx" (default) is array-axis order, the `transform` argument of `gazejax.data.gaze.render_gaussians`
        (equal to `gaze.pad_resize_transform(pad_before, 1 / cell)` for "area"); order="xy" matches (x, y) points.
        """
        if order not in ("yx", "xy"):
            raise ValueError(f"order must be 'yx' or 'xy', got {order!r}")
        cell = np.array(self.cell, dtype=np.float64)
        pad = np.array(self.pad_before, dtype=np.float64)
        scale, offset = (1.0 / cell, pad / cell) if self.method == "stride" else (1.0 / cell, (pad + 0.5) / cell - 0.5)
        return (scale, offset) if order == "yx" else (scale[::-1], offset[::-1])

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Original-image points [N, 2] (x, y) -> output-image points [N, 2] (x, y)."""
        scale, offset = self.as_affine("xy")
        return (np.asarray(xy, dtype=np.float64) * scale + offset).astype(np.float32)

    def unmap_points(self, xy: np.ndarray) -> np.ndarray:
        """Output-image points [N, 2] (x, y) -> original-image points (inverse of `map_points`)."""
        scale, offset = self.as_affine("xy")
        return ((np.asarray(xy, dtype=np.float64) - offset) / scale).astype(np.float32)

    def _canvas(self, image: np.ndarray) -> np.ndarray:
        if tuple(image.shape[:2]) != tuple(self.in_shape):
            raise ValueError(f"image shape {image.shape[:2]} != transform in_shape {self.in_shape}")
        (top, left), (hc, wc) = self.pad_before, self.canvas_shape
        pads = [(top, hc - top - image.shape[0]), (left, wc - left - image.shape[1])]
        pads += [(0, 0)] * (image.ndim - 2)
        return np.pad(image, pads, constant_values=self.pad_value)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Image [H, W] or [H, W, C] -> float32 [Ho, Wo(, C)]."""
        canvas = self._canvas(np.asarray(image))
        if self.method == "stride":
            dy, dx = (int(c) for c in self.cell)
            return canvas[::dy, ::dx].astype(np.float32)
        out = _area_axis(canvas, self.out_shape[0], 0)
        return _area_axis(out, self.out_shape[1], 1).astype(np.float32)

    def map_mask(self, mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Binary mask [H, W] -> bool [Ho, Wo]: area fraction >= threshold ("area") or strided pick ("stride")."""
        frac = self.apply(np.asarray(mask, dtype=np.float32) > 0)
        return frac >= threshold


def halve_dicom_resolution(in_shape: tuple[int, int], factor: int = 2, *, multiple: int = 32,
                           pad: str = "end", method: str = "stride") -> ResizeTransform:
    """The papers' preset: pad to a multiple of `multiple * factor`, then keep every `factor`-th pixel.

    factor=2 turns 3056x2544 MIMIC-CXR DICOMs into 1536x1280 (GG-CAM's 3072x2560 canvas, halved); factor=5 gives
    MT-UNet's 640x512. pad="end" puts the zeros bottom/right; method="area" averages d x d blocks instead.
    """
    step = multiple * factor
    canvas = tuple(int(math.ceil(s / step) * step) for s in in_shape)
    out = tuple(c // factor for c in canvas)
    return ResizeTransform.pad_to(in_shape, canvas, out, pad=pad, method=method)
