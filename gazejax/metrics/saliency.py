"""Saliency-map metrics of the MIT Saliency Benchmark (Bylinskii et al., "What do different evaluation metrics tell
us about saliency models?", TPAMI 2018), following its reference MATLAB code (KLdiv.m, CC.m, SIM.m, NSS.m, AUC_Judd.m).

All functions take a predicted map and a ground truth of the same shape ([H, W], or [D, H, W]; no resizing is
done) and return a Python float. Maps must be finite; degenerate inputs (a constant map where a metric divides by
its spread) give NaN with a warning, as the reference code does, rather than an exception mid-evaluation.
"""

from __future__ import annotations

import warnings

import numpy as np

EPS = 2.220446049250313e-16  # MATLAB `eps` (float64 machine epsilon), as in KLdiv.m


def _pair(pred: np.ndarray, gt: np.ndarray, func: str) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as float64 1-D arrays after shape and finiteness checks."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"{func}: pred shape {pred.shape} != ground-truth shape {gt.shape}")
    if pred.size == 0:
        raise ValueError(f"{func}: empty maps")
    pred, gt = pred.astype(np.float64).ravel(), gt.astype(np.float64).ravel()
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
        raise ValueError(f"{func}: maps contain NaN or inf")
    return pred, gt


def _fixations(pred: np.ndarray, fixation_mask: np.ndarray, func: str) -> tuple[np.ndarray, np.ndarray]:
    """Prediction as float64 1-D and the fixation mask as bool 1-D (any value > 0 counts as one fixated pixel)."""
    pred, fixations = _pair(pred, fixation_mask, func)
    fixations = fixations > 0
    if not fixations.any():
        raise ValueError(f"{func}: the fixation mask has no fixated pixel")
    return pred, fixations


def _nan(func: str, why: str) -> float:
    warnings.warn(f"{func}: {why}; returning NaN", RuntimeWarning, stacklevel=3)
    return float("nan")


def _to_distribution(x: np.ndarray) -> np.ndarray:
    """x / sum(x); an all-zero map stays zero (the `if any(map(:))` guard of the reference code)."""
    return x / x.sum() if np.any(x) else x


def kl_div(pred: np.ndarray, gt: np.ndarray) -> float:
    """KL(Q || P) = sum Q * ln(eps + Q / (P + eps)), P = pred / sum(pred), Q = gt / sum(gt), eps = 2.22e-16.

    `gt` is the ground-truth fixation density (e.g. a blurred gaze heat map). Lower is better; 0 for equal maps.
    Both maps must be non-negative.
    """
    pred, gt = _pair(pred, gt, "kl_div")
    if pred.min() < 0 or gt.min() < 0:
        raise ValueError("kl_div: maps must be non-negative")
    p, q = _to_distribution(pred), _to_distribution(gt)
    return float(np.sum(q * np.log(EPS + q / (p + EPS))))


def cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pearson correlation coefficient between the two maps (CC.m: standardise both, then corr2).

    NaN (with a warning) when either map is constant.
    """
    pred, gt = _pair(pred, gt, "cc")
    a, b = pred - pred.mean(), gt - gt.mean()
    denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
    if denominator == 0:
        return _nan("cc", "a map is constant")
    return float(np.sum(a * b) / denominator)


def _sim_normalise(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], then divide by the sum; an all-zero map stays zero, a constant non-zero one becomes NaN."""
    if not np.any(x):
        return x
    span = x.max() - x.min()
    if span == 0:
        return np.full_like(x, np.nan)
    x = (x - x.min()) / span
    return x / x.sum()


def sim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Similarity (histogram intersection): sum of element-wise minima of the two min-max-normalised distributions.

    Each map is min-max scaled to [0, 1] and divided by its sum (SIM.m); 1 for identical maps, 0 for disjoint.
    An all-zero map stays zero (score 0); a constant non-zero map gives NaN with a warning.
    """
    pred, gt = _pair(pred, gt, "sim")
    p, q = _sim_normalise(pred), _sim_normalise(gt)
    if np.isnan(p).any() or np.isnan(q).any():
        return _nan("sim", "a map is constant and non-zero")
    return float(np.sum(np.minimum(p, q)))


histogram_intersection = sim


def hs(pred: np.ndarray, gt: np.ndarray) -> float:
    """Histogram similarity (HS, Qiu et al.'s Table 2): sum of element-wise minima of P = pred / sum(pred) and
    Q = gt / sum(gt), the maps taken as they are (no min-max stretch, unlike `sim`).

    1 for maps proportional to each other, 0 for disjoint ones. Both maps must be non-negative; an all-zero map
    stays zero (score 0), as in `sim` and `kl_div`. A softmax prediction is > 0 everywhere, so its minimum is not
    lifted to 0 first as SIM's min-max does, which is why HS and SIM differ on the same maps.
    """
    pred, gt = _pair(pred, gt, "hs")
    if pred.min() < 0 or gt.min() < 0:
        raise ValueError("hs: maps must be non-negative")
    return float(np.sum(np.minimum(_to_distribution(pred), _to_distribution(gt))))


def nss(pred: np.ndarray, fixation_mask: np.ndarray) -> float:
    """Normalised scanpath saliency: mean of the standardised prediction over fixated pixels.

    The prediction is standardised with its mean and its sample std (ddof=1, MATLAB `std`); pixels with
    `fixation_mask > 0` count once each. NaN (with a warning) for a constant prediction.
    """
    pred, fixations = _fixations(pred, fixation_mask, "nss")
    std = pred.std(ddof=1) if pred.size > 1 else 0.0
    if std == 0:
        return _nan("nss", "the prediction is constant")
    return float(np.mean((pred[fixations] - pred.mean()) / std))


def auc_judd(pred: np.ndarray, fixation_mask: np.ndarray) -> float:
    """AUC-Judd: area under the ROC curve whose thresholds are the prediction's values at fixated pixels.

    For each distinct threshold t among the fixated values (no jitter): TPR = fraction of fixated pixels with
    pred >= t, FPR = fraction of non-fixated pixels with pred >= t; the points (0, 0) and (1, 1) close the curve,
    integrated with the trapezoidal rule. Without tied fixated values this equals AUC_Judd.m with jitter off;
    with ties, tied fixated pixels are counted as true positives together rather than one at a time.
    """
    pred, fixations = _fixations(pred, fixation_mask, "auc_judd")
    positives, negatives = np.sort(pred[fixations]), np.sort(pred[~fixations])
    if negatives.size == 0:
        raise ValueError("auc_judd: every pixel is fixated, so there are no negatives")
    thresholds = np.unique(positives)[::-1]  # descending
    # Count of values >= t in a sorted array = size - (index of the first value >= t).
    tpr = (positives.size - np.searchsorted(positives, thresholds, side="left")) / positives.size
    fpr = (negatives.size - np.searchsorted(negatives, thresholds, side="left")) / negatives.size
    tpr = np.concatenate([[0.0], tpr, [1.0]])
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    return float(np.trapezoid(tpr, fpr))
