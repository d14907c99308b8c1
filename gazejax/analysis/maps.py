"""Explanation maps brought to a common scale: bilinear resizing to a grid and per-map min-max normalisation, shared
by GazAT's attention alignment, the chest X-ray leaderboard and gazejax.predict's overlays."""
from __future__ import annotations

import jax
import numpy as np


def resize_maps(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[N, h, w] -> [N, *grid] by bilinear interpolation (half-pixel centres, the gaze grids' convention)."""
    maps = np.asarray(maps, np.float32)
    return np.asarray(jax.image.resize(maps, (maps.shape[0], *grid), "linear"))


def minmax(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max normalisation of [N, ...] (constant maps -> 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, span = flat.min(1, keepdims=True), np.ptp(flat, axis=1, keepdims=True)
    return ((flat - lo) / np.where(span > 0, span, 1.0)).reshape(maps.shape)
