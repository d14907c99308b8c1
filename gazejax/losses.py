"""Pure loss functions of the gaze methods (soft Dice, gaze BCE, saliency KL, CE) and multi-task loss weighting.

Every function takes logits (any float dtype, bf16 included) and computes in float32; all return a float32 scalar.
Shapes are channels-last: `[B, ..., C]` where `...` is the spatial grid (2D or 3D).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

# MATLAB `eps` as used by the MIT Saliency Benchmark's KLdiv.m (same constant as gazejax.metrics.saliency.EPS).
MIT_EPS = 2.220446049250313e-16


def _check_same_shape(func: str, logits: Array, targets: Array) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"{func}: logits shape {logits.shape} != targets shape {targets.shape}")


def _gaze_mask(func: str, has_gaze: Array | None, batch: int) -> Array:
    """`has_gaze` as a bool `[B]` vector (all True when None)."""
    if has_gaze is None:
        return jnp.ones((batch,), bool)
    has_gaze = jnp.asarray(has_gaze)
    if has_gaze.shape != (batch,):
        raise ValueError(f"{func}: has_gaze must have shape ({batch},), got {has_gaze.shape}")
    return has_gaze.astype(bool)


def _masked_mean(values: Array, mask: Array | None) -> Array:
    """Mean of `values` where `mask` (broadcast to its shape), 0 when nothing is selected; plain mean if no mask."""
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), values.shape)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)


def _fill_masked(target: Array, mask: Array, fill: float) -> Array:
    """Replaces the targets of unselected samples by `fill` so that their (discarded) loss stays finite.

    `jnp.where` alone is not enough: a NaN in the discarded branch still poisons the gradient (0 * NaN).
    """
    mask = mask.reshape((-1,) + (1,) * (target.ndim - 1))
    return jnp.where(mask, target, fill)


def dice_per_channel(
    logits: Array, targets: Array, smooth: float = 1.0, per_sample: bool = False
) -> Array:
    """Soft Dice of sigmoid(logits) per channel: (2 sum p t + s) / (sum p^2 + sum t^2 + s).

    Args:
      logits: `[B, ..., C]` raw scores (one sigmoid per channel, e.g. [ET, TC, WT]).
      targets: `[B, ..., C]` binary (or soft) masks.
      smooth: `s` above; keeps an empty-target channel finite (predicting all zeros there gives Dice 1).
      per_sample: False (default, open_brats2020's EDiceLoss) pools the sums over the batch AND the space, so one
        Dice per channel for the whole batch; True sums over space only.

    Returns:
      `[C]` (pooled) or `[B, C]` (per sample) float32 Dice values.
    """
    _check_same_shape("dice_per_channel", logits, targets)
    if logits.ndim < 2:
        raise ValueError(f"dice_per_channel: expected [B, ..., C] inputs, got shape {logits.shape}")
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = targets.astype(jnp.float32)
    axes = tuple(range(1, p.ndim - 1)) if per_sample else tuple(range(p.ndim - 1))
    intersection = jnp.sum(p * t, axis=axes)
    # Squared denominators: Eq. 3, Huang et al. (and open_brats2020's `inputs.pow(2).sum()`).
    denominator = jnp.sum(p * p, axis=axes) + jnp.sum(t * t, axis=axes)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def soft_dice_loss(logits: Array, targets: Array, smooth: float = 1.0, per_sample: bool = False) -> Array:
    """1 - mean over channels of `dice_per_channel` (Eq. 3, Huang et al., written there without the `1 -`).

    Logits/targets `[B, ..., C]`. The default pools over the batch as open_brats2020 does (identical for its batch
    size 1); `per_sample=True` averages per-sample Dice instead.
    """
    return 1.0 - jnp.mean(dice_per_channel(logits, targets, smooth, per_sample))


def gaze_bce(logits: Array, target: Array, has_gaze: Array | None = None) -> Array:
    """Binary cross-entropy between the predicted gaze map and the measured one (Eq. 4, Huang et al.).

    Args:
      logits: `[B, ..., 1]` raw gaze-map scores (sigmoid is applied inside, in the numerically stable form).
      target: `[B, ..., 1]` gaze map in [0, 1].
      has_gaze: `[B]` bool; samples without recorded gaze are left out. None means every sample has gaze.

    Returns:
      The mean over voxels (1/P in Eq. 4) of each gaze sample, averaged over those samples; exactly 0 with a zero
      (finite) gradient when no sample has gaze.
    """
    _check_same_shape("gaze_bce", logits, target)
    mask = _gaze_mask("gaze_bce", has_gaze, logits.shape[0])
    target = _fill_masked(target.astype(jnp.float32), mask, 0.0)
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), target)
    per_sample = jnp.mean(bce.reshape(bce.shape[0], -1), axis=1)
    return _masked_mean(per_sample, mask)


def kl_saliency(
    logits: Array,
    target: Array,
    has_gaze: Array | None = None,
    form: Literal["mit", "torch"] = "mit",
    eps: float = MIT_EPS,
) -> Array:
    """KL(Q || P) between the gaze density Q = target / sum(target) and P = softmax of the flattened logits.

    The saliency loss of MT-UNet and CXRGazeLearn, one distribution per sample over all pixels/voxels.

    Args:
      logits: `[B, H, W(, D), 1]` raw saliency scores.
      target: same shape, a non-negative gaze heat map (any scale; it is normalised to sum 1 here).
      has_gaze: `[B]` bool; samples without gaze are left out (0 loss and gradient if none has gaze).
      form: "mit" (default): sum Q ln(eps + Q / (P + eps)) with eps = 2.22e-16, the MIT Saliency Benchmark's
        KLdiv.m, equal to `gazejax.metrics.saliency.kl_div(softmax, target)`. "torch": sum Q (ln Q - log_softmax),
        0 ln 0 = 0, what the reference code trains with (`F.kl_div(log_softmax, Q, reduction="batchmean")`);
        identical up to the eps terms, and better conditioned where P underflows.
      eps: the eps of the "mit" form.

    Returns:
      The per-sample KL averaged over samples with gaze (float32 scalar).
    """
    _check_same_shape("kl_saliency", logits, target)
    if form not in ("mit", "torch"):
        raise ValueError(f"kl_saliency: form must be 'mit' or 'torch', got {form!r}")
    mask = _gaze_mask("kl_saliency", has_gaze, logits.shape[0])
    batch = logits.shape[0]
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32).reshape(batch, -1), axis=1)
    # A uniform stand-in for samples without gaze keeps Q = target / sum finite (no 0 / 0).
    target = _fill_masked(target.astype(jnp.float32), mask, 1.0).reshape(batch, -1)
    q = target / jnp.sum(target, axis=1, keepdims=True)
    if form == "mit":
        per_sample = jnp.sum(q * jnp.log(eps + q / (jnp.exp(log_p) + eps)), axis=1)
    else:
        per_sample = jnp.sum(jax.scipy.special.xlogy(q, q) - q * log_p, axis=1)
    return _masked_mean(per_sample, mask)


def softmax_ce(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Mean softmax cross-entropy of `logits [B, K]` against integer `labels [B]` (single-label classes).

    `mask [B]` (optional) drops samples with unknown labels from the mean (their label must still be a valid
    index, e.g. `jnp.maximum(labels, 0)`); all masked gives 0.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"softmax_ce: logits shape {logits.shape} does not match labels shape {labels.shape}")
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return _masked_mean(ce, mask)


def sigmoid_bce_multilabel(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean sigmoid BCE over classes and samples of `logits [B, K]` against 0/1 `targets [B, K]` (multi-label).

    `mask [B, K]` (optional) drops unknown labels from the mean; all masked gives 0.
    """
    _check_same_shape("sigmoid_bce_multilabel", logits, targets)
    targets = targets.astype(jnp.float32)
    if mask is not None:  # unknown labels may be NaN placeholders: keep their discarded loss finite
        targets = jnp.where(jnp.broadcast_to(jnp.asarray(mask, bool), targets.shape), targets, 0.0)
    return _masked_mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), mask)


def kendall_weighting(
    losses: Sequence[Array],
    log_sigmas: Sequence[Array] | Array,
    classification: Sequence[bool] | None = None,
    regulariser: Literal["log", "log1p"] = "log",
) -> Array:
    """Learnable uncertainty weighting of task losses (Kendall, Gal & Cipolla, CVPR 2018).

    total = sum_i c_i L_i / sigma_i^2 + R(sigma_i), sigma_i = exp(log_sigma_i), where c_i = 1 for a classification
    term and 1/2 otherwise (Kendall's Eqs. 7 and 10).

    Args:
      losses: the task losses L_i (scalars).
      log_sigmas: the learnable log sigma_i (scalars, or one `[n]` array); train these, not sigma, so sigma > 0.
      classification: per-term flags for c_i = 1; None means all terms use 1/(2 sigma^2) (the plain Kendall form
        sum L_i / (2 sigma_i^2) + log sigma_i).
      regulariser: "log" = log sigma_i (Kendall; can go to -inf), "log1p" = log(sigma_i + 1), the non-negative
        variant of MT-UNet and GG-CAM (Eq. 11, Zhu et al.); see `mtunet_weighting`.
    """
    log_sigmas = [jnp.asarray(s, jnp.float32) for s in log_sigmas]
    classification = [False] * len(losses) if classification is None else list(classification)
    if not len(losses) == len(log_sigmas) == len(classification):
        raise ValueError(
            f"kendall_weighting: {len(losses)} losses, {len(log_sigmas)} log_sigmas and "
            f"{len(classification)} classification flags must match"
        )
    if regulariser not in ("log", "log1p"):
        raise ValueError(f"kendall_weighting: regulariser must be 'log' or 'log1p', got {regulariser!r}")
    total = jnp.zeros((), jnp.float32)
    for loss, log_sigma, is_class in zip(losses, log_sigmas, classification):
        scale = 1.0 if is_class else 0.5
        # log(sigma + 1) = softplus(log sigma), stable for any log sigma.
        penalty = log_sigma if regulariser == "log" else jax.nn.softplus(log_sigma)
        total = total + scale * jnp.asarray(loss, jnp.float32) * jnp.exp(-2.0 * log_sigma) + penalty
    return total


def mtunet_weighting(ce: Array, kl: Array, log_sigma_ce: Array, log_sigma_kl: Array) -> Array:
    """MT-UNet's total loss CE / sigma_c^2 + log(sigma_c + 1) + KL / (2 sigma_i^2) + log(sigma_i + 1).

    The same form as GG-CAM's Eq. 11 (Zhu et al.) with its selective MSE in place of the KL.
    """
    return kendall_weighting([ce, kl], [log_sigma_ce, log_sigma_kl], classification=(True, False), regulariser="log1p")


def weighted_sum(terms: Mapping[str, Array], weights: Mapping[str, float]) -> tuple[Array, dict[str, Array]]:
    """sum_k weights[k] * terms[k] (e.g. L = w1 L_seg + w2 L_g, Huang et al. Sec. 3.3) and the unweighted terms.

    Every term needs a weight (a missing one is an error, so a typo cannot silently weight a term by 1); weights
    of terms absent from `terms` are ignored, so one config serves ablations that drop a term.
    """
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(f"weighted_sum: no weight for loss term(s) {missing}; weights given for {sorted(weights)}")
    terms = {name: jnp.asarray(value, jnp.float32) for name, value in terms.items()}
    total = sum((weights[name] * value for name, value in terms.items()), jnp.zeros((), jnp.float32))
    return total, terms
