"""Classification metrics in numpy: rank-based AUROC (one-vs-rest macro and multi-label), accuracy, precision,
recall and F1, with scikit-learn's semantics.

A class whose one-vs-rest labels take a single value has no AUROC: it is reported as NaN, with a warning, and left
out of the macro mean (scikit-learn would raise instead).
"""

from __future__ import annotations

import warnings

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties sharing the mean of their ranks (scipy.stats.rankdata(method="average"))."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def binary_auroc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of scores for a bool target via the Mann-Whitney U statistic (ties count 1/2); NaN if one class."""
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(scores)[is_positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _check_scores(scores: np.ndarray, n: int, func: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != n:
        raise ValueError(f"{func}: scores must be [N={n}, C], got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{func}: scores contain NaN or inf")
    return scores


def _check_labels(labels: np.ndarray, num_classes: int, func: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.all(labels == np.round(labels))):
        raise ValueError(f"{func}: labels must be integer class indices of shape [N], got {labels.dtype} "
                         f"{labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{func}: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return labels


def _per_column_auroc(targets: np.ndarray, scores: np.ndarray, func: str) -> list[float]:
    """AUROC of each column of bool targets [N, C] against scores [N, C]; NaN + warning for one-valued columns."""
    aurocs = [binary_auroc(targets[:, c], scores[:, c]) for c in range(scores.shape[1])]
    missing = [c for c, a in enumerate(aurocs) if np.isnan(a)]
    if missing:
        warnings.warn(f"{func}: classes {missing} have only one label value in this set; their AUROC is NaN "
                      "and left out of the mean", RuntimeWarning, stacklevel=3)
    return aurocs


def _probabilities(labels: np.ndarray, probs: np.ndarray, func: str) -> tuple[np.ndarray, np.ndarray]:
    """[N] labels and [N, C] class probabilities (a 1-D probs is P(class 1) of a binary problem)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    probs = _check_scores(probs, np.asarray(labels).shape[0], func)
    # Per-column ranks of logits differ from those of softmax outputs, so OvR AUROC is only defined on
    # probabilities; scikit-learn refuses rows that do not sum to 1 for the same reason.
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"{func}: probs rows must sum to 1 (pass softmax probabilities, not logits)")
    return _check_labels(labels, probs.shape[1], func), probs


def auroc_per_class(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUROC of each class from integer labels [N] and class probabilities [N, C].

    A class absent from `labels` (or the only class present) gets NaN, with a warning.
    """
    labels, probs = _probabilities(labels, probs, "auroc_per_class")
    targets = labels[:, None] == np.arange(probs.shape[1])[None, :]
    return _per_column_auroc(targets, probs, "auroc_per_class")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def auroc_ovr(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUROC: the mean of `auroc_per_class` over classes that have both label values.

    Equals sklearn.metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro") when every class occurs.
    """
    return _nanmean(auroc_per_class(labels, probs))


def multilabel_auroc(targets: np.ndarray, scores: np.ndarray) -> dict[str, list[float] | float]:
    """Per-class AUROC of a multi-label problem and their mean.

    Args:
      targets: [N, C] binary (0/1 or bool) labels.
      scores: [N, C] scores (probabilities or logits; only their per-column order matters).
    Returns:
      {"per_class": [C floats, NaN where a column has one label value], "mean": mean over the non-NaN ones}.
    """
    targets = np.asarray(targets)
    scores = _check_scores(scores, targets.shape[0], "multilabel_auroc")
    if targets.shape != scores.shape or not np.all((targets == 0) | (targets == 1)):
        raise ValueError(f"multilabel_auroc: targets must be 0/1 of shape {scores.shape}, got {targets.shape}")
    per_class = _per_column_auroc(targets.astype(bool), scores, "multilabel_auroc")
    return {"per_class": per_class, "mean": _nanmean(per_class)}


def _predictions(probs_or_pred: np.ndarray, n: int, func: str) -> np.ndarray:
    """[N, C] scores -> argmax class; [N] integer(-valued) predictions pass through."""
    x = np.asarray(probs_or_pred)
    if x.ndim == 2 and x.shape[0] == n:
        return np.argmax(x, axis=1)
    if x.ndim == 1 and x.shape[0] == n and np.all(x == np.round(x)):
        return x.astype(np.int64)
    raise ValueError(f"{func}: pass [N={n}, C] scores or [N] integer predictions, got {x.dtype} {x.shape}")


def accuracy(labels: np.ndarray, probs_or_pred: np.ndarray) -> float:
    """Fraction of samples whose prediction (argmax of [N, C] scores, or [N] integer predictions) equals the label."""
    labels = np.asarray(labels)
    pred = _predictions(probs_or_pred, labels.shape[0], "accuracy")
    if labels.size == 0:
        raise ValueError("accuracy: no samples")
    return float(np.mean(pred == labels))


def _confusion_counts(labels: np.ndarray, pred: np.ndarray, num_classes: int, func: str):
    """True positives, predicted counts and true counts per class, each [C]."""
    labels = _check_labels(labels, num_classes, func)
    pred = _check_labels(_predictions(pred, labels.shape[0], func), num_classes, func)
    tp = np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)
    predicted = np.bincount(pred, minlength=num_classes).astype(np.float64)
    support = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return tp, predicted, support


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _precision_recall_f1(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray):
    """Per-class precision, recall and F1, each [C]."""
    precision, recall = _safe_divide(tp, predicted), _safe_divide(tp, support)
    return precision, recall, _safe_divide(2 * precision * recall, precision + recall)


def precision_recall(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[int, dict[str, float]]:
    """Per-class precision, recall, F1 and support.

    Args:
      labels: [N] integer labels in [0, num_classes).
      pred: [N] integer predictions, or [N, C] scores (argmax is taken).
    Returns:
      {class_index: {"precision", "recall", "f1", "support"}}; a ratio with a zero denominator is 0.0
      (scikit-learn's zero_division=0).
    """
    tp, predicted, support = _confusion_counts(labels, pred, num_classes, "precision_recall")
    precision, recall, f1_scores = _precision_recall_f1(tp, predicted, support)
    return {c: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1_scores[c]),
                "support": float(support[c])} for c in range(num_classes)}


def f1(labels: np.ndarray, pred: np.ndarray, num_classes: int, average: str = "macro") -> float:
    """F1 score averaged over the classes 0..num_classes-1 ("macro"), by support ("weighted"), or pooled ("micro").

    Same semantics as sklearn.metrics.f1_score(labels, pred, labels=range(num_classes), average=...,
    zero_division=0).
    """
    tp, predicted, support = _confusion_counts(labels, pred, num_classes, "f1")
    if average == "micro":
        # Every sample is one prediction and one label, so pooled precision = pooled recall = accuracy.
        return float(tp.sum() / support.sum()) if support.sum() else 0.0
    per_class = _precision_recall_f1(tp, predicted, support)[2]
    if average == "macro":
        return float(per_class.mean())
    if average == "weighted":
        return float(np.sum(per_class * support) / support.sum()) if support.sum() else 0.0
    raise ValueError(f"f1: average must be 'macro', 'weighted' or 'micro', got {average!r}")


def auroc_ovo(labels: np.ndarray, probs: np.ndarray) -> float:
    """Hand & Till's multi-class AUC: the mean over class pairs (a, b) of (AUC(a vs b by p_a) + AUC(b vs a by
    p_b)) / 2 on the samples of a or b (scikit-learn `roc_auc_score(multi_class="ovo")`, macro). Pairs missing a
    class are left out; NaN if none is left."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    pairs = []
    for a in range(probs.shape[1]):
        for b in range(a + 1, probs.shape[1]):
            sel = (labels == a) | (labels == b)
            both = [binary_auroc(labels[sel] == c, probs[sel, c]) for c in (a, b)]
            if not np.isnan(both).any():
                pairs.append(np.mean(both))
    return float(np.mean(pairs)) if pairs else float("nan")


def auroc(labels: np.ndarray, probs: np.ndarray, warn: bool = True) -> float:
    """One AUROC for either task: `auroc_ovr` of int labels [N] against probs [N, C], or, for multi-label targets
    [N, K] (float, NaN = unknown), the mean of the per-finding AUROCs over known labels (NaN findings left out).
    `warn=False` silences the one-valued-class warning (e.g. when a linear probe scores many fits)."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore", RuntimeWarning)
        if labels.ndim == 1:
            return auroc_ovr(labels, probs)
        per = _finding_aurocs(labels.astype(np.float64), probs)
        return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")


def _finding_aurocs(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    known = np.isfinite(targets)
    return [binary_auroc(targets[known[:, k], k] > 0.5, probs[known[:, k], k]) for k in range(targets.shape[1])]


def _multilabel_summary(targets: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    known, pred = np.isfinite(targets), probs >= 0.5
    per = _finding_aurocs(targets, probs)
    f1s = [precision_recall((targets[known[:, k], k] > 0.5).astype(int), pred[known[:, k], k].astype(int), 2)[1]
           ["f1"] for k in range(targets.shape[1])]
    out = {"auroc": float(np.nanmean(per)) if np.isfinite(per).any() else float("nan"),
           "accuracy": float(np.mean(pred[known] == (targets[known] > 0.5))), "f1": float(np.mean(f1s))}
    out.update({f"auroc_{n}": float(v) for n, v in zip(names, per)})
    return out


def summary(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """The classification summary the chest X-ray methods report, keyed by metric and class name.

    Single-label (labels int [N], probs [N, C]): auroc (one-vs-rest macro, `auroc_ovr`), auroc_ovo (Hand & Till),
    accuracy, f1 (macro) and per class auroc_<name>, precision_<name>, recall_<name>, f1_<name>.
    Multi-label (labels float [N, K], NaN = unknown; probs [N, K] per-finding probabilities): auroc (mean of the
    per-finding AUROCs over known labels, NaN findings left out), accuracy and f1 (mean over findings) at 0.5, and
    auroc_<name>.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    if labels.ndim == 2:
        return _multilabel_summary(labels.astype(np.float64), probs, names)
    metrics = {"auroc": auroc_ovr(labels, probs), "auroc_ovo": auroc_ovo(labels, probs),
               "accuracy": accuracy(labels, probs), "f1": f1(labels, probs, len(names))}
    with warnings.catch_warnings():  # auroc_ovr has just warned about any class without both label values
        warnings.simplefilter("ignore", RuntimeWarning)
        per_class = auroc_per_class(labels, probs)
    pr = precision_recall(labels, probs, len(names))
    for c, name in enumerate(names):
        metrics[f"auroc_{name}"] = per_class[c]
        metrics.update({f"{k}_{name}": pr[c][k] for k in ("precision", "recall", "f1")})
    return metrics
