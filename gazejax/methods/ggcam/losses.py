"""GG-CAM's losses (Zhu et al.): the selective MSE between the true class's squashed CAM
and the gaze heat map (Eq. 9-10), the uncertainty-weighted total loss (Eq. 11), and the start-up check that
refuses initial sigmas whose Eq. 11 weights would overflow the compute dtype.
Eq. 12's peak-in-organ hit is `gazejax.metrics.localization.interpretability_hit`.

Channels-last: CAM `[B, h, w, C]`, gaze `[B, h, w]` on the CAM grid.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gazejax.losses import _fill_masked, _gaze_mask, _masked_mean

Array = jax.Array


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
        raise ValueError(f"ggcam: selective_mse expects cam [B, h, w, C], got shape {cam.shape}")
    if gaze.ndim == 4 and gaze.shape[-1] == 1:
        gaze = gaze[..., 0]
    if gaze.shape != cam.shape[:3]:
        raise ValueError(f"ggcam: selective_mse gaze shape {gaze.shape} does not match the CAM grid "
                         f"{cam.shape[:3]}")
    if jnp.shape(labels) != cam.shape[:1]:
        raise ValueError(f"ggcam: selective_mse labels must have shape ({cam.shape[0]},), "
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


SM_BOUND = 1.0  # L_sm <= 1: a mean of squared differences of values in [0, 1] (Eq. 9-10, Psi in [0, 1])
CE_START_BOUND = 100.0  # L_ce at the start: -ln p_Y; 100 would be p_Y = e^-100, which no initialisation gives


def check_sigma_start(sigma_sm: float, sigma_ce: float, dtype, fields: tuple[str, str] = ("sigma_sm", "sigma_ce"),
                      where: str = "ggcam") -> None:
    """Refuses start values of Eq. 11's sigmas that overflow `dtype` (the narrower of it and float32) at the start.

    For each term with loss L <= bound (L_sm <= 1, L_ce <= `CE_START_BOUND`) and weight w = 1 / (2 sigma_sm^2)
    or 1 / sigma_ce^2: the weighted loss w L, which is also the scale of the cotangent the backward pass carries
    in the compute dtype, and the squared gradient of log sigma, (2 w L)^2 (d/d log sigma of w L = -2 w L), which
    optax's Adam forms as g ** 2 before scaling it by (1 - b2), must stay finite. An inf second moment never
    decays, so that parameter stops for good: Table 1's sigma_sm = 1.4e-11 = e^-25 gives (L_sm / sigma_sm^2)^2 up
    to 2.7e43 > 3.4e38 in float32 (measured: inf moments for log sigma_sm and 8-9 % of EfficientNetV2-S's weights
    after 3 steps). Raises a one-line ValueError naming the offending field (`fields`) and the smallest start
    value that passes.
    """
    limit = min(float(jnp.finfo(dtype).max), float(jnp.finfo(jnp.float32).max))
    terms = ((fields[0], sigma_sm, SM_BOUND, 0.5, f"the GG-CAM reference code starts sigma_sm at exp(-16) = "
                                                 f"{math.exp(-16):.3g}"),
             (fields[1], sigma_ce, CE_START_BOUND, 1.0, "the paper starts sigma_ce at 1"))
    for name, sigma, bound, half, hint in terms:
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{where}: {name} must be a finite start value > 0, got {sigma}")
        weight = half / sigma ** 2  # Eq. 11: 1 / (2 sigma_sm^2), 1 / sigma_ce^2
        loss, grad_sq = weight * bound, (2.0 * weight * bound) ** 2
        if loss < limit and grad_sq < limit:
            continue
        # the binding condition is (2 w bound)^2 < limit, i.e. sigma^2 > 2 half bound / sqrt(limit)
        smallest = math.sqrt(2.0 * half * bound / math.sqrt(limit))
        raise ValueError(
            f"{where}: {name} = {sigma:.3g} overflows {jnp.dtype(dtype).name} at the start: the weighted loss reaches "
            f"{loss:.3g} and the squared gradient of its log {grad_sq:.3g} (limit {limit:.3g}), so gradients or "
            f"Adam's second moment become inf (an inf moment never decays: the parameter never moves again); use a "
            f"start value above {smallest:.3g} ({hint})")
