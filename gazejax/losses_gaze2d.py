"""GG-CAM's losses and interpretability test (Zhu et al.): the selective MSE between the true class's squashed CAM
and the gaze heat map (Eq. 9-10), the uncertainty-weighted total loss (Eq. 11), and the peak-in-organ hit of
Eq. 12 (numpy, for evaluation).

Channels-last: CAM `[B, h, w, C]`, gaze `[B, h, w]` on the CAM grid, organ masks `[B, H, W]` or `[B, H, W, C]`.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gazejax.losses import _fill_masked, _gaze_mask, _masked_mean

Array = jax.Array
MASK_SCALINGS = ("area", "nearest", "any")


def selective_mse(cam: Array, labels: Array, gaze: Array, log_alpha: Array, has_gaze: Array | None = None) -> Array:
    """Selective MSE L_sm (Eq. 9-10, Zhu et al.), averaged over the samples that have gaze.

    Per sample, only the true class's map Omega^Y is supervised: L_sm = mean_ij (sigmoid(alpha Omega^Y_ij) -
    Psi_ij)^2 with alpha = exp(log_alpha) > 0. (The reference code instead compares class 0's raw CAM with Psi,
    because it indexes the CAM with int(sigmoid(label * alpha)) = 0; that defect is not reproduced.)

    Args:
      cam: Omega `[B, h, w, C]` (any float dtype; computed in float32).
      labels: `[B]` integer true classes Y in [0, C).
      gaze: Psi `[B, h, w]` (or `[B, h, w, 1]`) in [0, 1], already on the CAM grid (Algorithm 1 resamples it).
      log_alpha: the learnable scalar log alpha (`GGCAMModel`'s "log_alpha").
      has_gaze: `[B]` bool; samples without gaze are left out (None = all have gaze). Their gaze may be NaN.

    Returns:
      float32 scalar; exactly 0 with a finite zero gradient when no sample has gaze.
    """
    if cam.ndim != 4:
        raise ValueError(f"losses_gaze2d.py: selective_mse expects cam [B, h, w, C], got shape {cam.shape}")
    if gaze.ndim == 4 and gaze.shape[-1] == 1:
        gaze = gaze[..., 0]
    if gaze.shape != cam.shape[:3]:
        raise ValueError(f"losses_gaze2d.py: selective_mse gaze shape {gaze.shape} does not match the CAM grid "
                         f"{cam.shape[:3]}")
    if jnp.shape(labels) != cam.shape[:1]:
        raise ValueError(f"losses_gaze2d.py: selective_mse labels must have shape ({cam.shape[0]},), "
                         f"got {jnp.shape(labels)}")
    mask = _gaze_mask("selective_mse", has_gaze, cam.shape[0])
    gaze = _fill_masked(gaze.astype(jnp.float32), mask, 0.0)
    index = jnp.asarray(labels, jnp.int32)[:, None, None, None]
    omega_y = jnp.take_along_axis(cam.astype(jnp.float32), index, axis=-1)[..., 0]  # Omega^Y, [B, h, w]
    squashed = jax.nn.sigmoid(jnp.exp(jnp.asarray(log_alpha, jnp.float32)) * omega_y)  # Eq. 10
    per_sample = jnp.mean((squashed - gaze) ** 2, axis=(1, 2))  # Eq. 9
    return _masked_mean(per_sample, mask)


def ggcam_total(ce: Array, sm: Array, log_sigma_ce: Array, log_sigma_sm: Array) -> Array:
    """GG-CAM's multi-task loss, Eq. 11 of Zhu et al. exactly as printed:

        L = L_sm / (2 sigma_sm^2) + L_ce / sigma_ce^2 + ln(sigma_sm + 1) + ln(sigma_ce + 1)

    with sigma = exp(log_sigma) > 0 (the model learns the logs). Note the asymmetry: 1/2 on the MSE term only
    (Kendall et al.'s regression vs. classification weights) and ln(sigma + 1), not ln sigma, so L >= 0. Same form
    as `gazejax.losses.mtunet_weighting`; written out here so that the equation can be checked at a glance.
    """
    log_sigma_ce = jnp.asarray(log_sigma_ce, jnp.float32)
    log_sigma_sm = jnp.asarray(log_sigma_sm, jnp.float32)
    weighted = (0.5 * jnp.exp(-2.0 * log_sigma_sm) * jnp.asarray(sm, jnp.float32)
                + jnp.exp(-2.0 * log_sigma_ce) * jnp.asarray(ce, jnp.float32))
    # ln(sigma + 1) = softplus(ln sigma): exact, and stable for the tiny initial sigma_sm (~1e-11).
    return weighted + jax.nn.softplus(log_sigma_sm) + jax.nn.softplus(log_sigma_ce)


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
        raise ValueError(f"losses_gaze2d.py: mask scaling must be one of {MASK_SCALINGS}, got {mode!r}")
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


def interpretability_hit(cam: np.ndarray | Array, labels: np.ndarray | Array, masks: np.ndarray,
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
        raise ValueError(f"losses_gaze2d.py: interpretability_hit expects cam [B, h, w, C] and labels [B], got "
                         f"{cam.shape} and {labels.shape}")
    batch, h, w, classes = cam.shape
    if masks.ndim == 4:
        if masks.shape[-1] != classes:
            raise ValueError(f"losses_gaze2d.py: per-class masks have {masks.shape[-1]} channels, CAM {classes}")
        masks = masks[np.arange(batch), ..., labels]
    if masks.ndim != 3 or masks.shape[0] != batch:
        raise ValueError(f"losses_gaze2d.py: masks must be [B, H, W] or [B, H, W, C] with B={batch}, "
                         f"got {masks.shape}")
    omega_y = cam[np.arange(batch), ..., labels]  # [B, h, w]
    peak = np.argmax(omega_y.reshape(batch, -1), axis=1)
    inside = scale_mask(masks, (h, w), mode).reshape(batch, -1)
    return inside[np.arange(batch), peak]
