"""Tests of gazejax.metrics.classification against scikit-learn and hand-computed values."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from gazejax.metrics import classification as clf


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_binary_auroc_hand_value_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5 / 4
    y = np.array([True, True, False, False])
    s = np.array([0.8, 0.4, 0.4, 0.1])
    assert clf.binary_auroc(y, s) == pytest.approx(3.5 / 4)
    assert math.isnan(clf.binary_auroc(np.ones(3, bool), np.arange(3.0)))


def test_auroc_ovr_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    probs = _softmax(rng.normal(size=(60, 4)) + 1.5 * np.eye(4)[labels])
    probs = np.round(probs, 2)  # creates ties
    probs /= probs.sum(axis=1, keepdims=True)
    expected = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert clf.auroc_ovr(labels, probs) == pytest.approx(expected, rel=1e-12)
    per_class = clf.auroc_per_class(labels, probs)
    sk_per_class = [skm.roc_auc_score(labels == c, probs[:, c]) for c in range(4)]
    np.testing.assert_allclose(per_class, sk_per_class, rtol=1e-12)
    assert isinstance(clf.auroc_ovr(labels, probs), float)


def test_auroc_binary_1d_probs_match_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    p = np.clip(0.3 * labels + 0.7 * rng.random(40), 0, 1)
    assert clf.auroc_ovr(labels, p) == pytest.approx(skm.roc_auc_score(labels, p), rel=1e-12)


def test_auroc_missing_class_is_nan_and_left_out():
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = _softmax(np.array([[2, 0, 0], [1, 0, 0], [0, 2, 0], [0, 1, 1], [0, 1, 0], [1, 2, 0.0]]))
    with pytest.warns(RuntimeWarning, match=r"classes \[2\]"):
        per_class = clf.auroc_per_class(labels, probs)
    assert math.isnan(per_class[2])
    with pytest.warns(RuntimeWarning):
        macro = clf.auroc_ovr(labels, probs)
    expected = np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)])
    assert macro == pytest.approx(expected)


def test_auroc_rejects_logits():
    with pytest.raises(ValueError, match="sum to 1"):
        clf.auroc_ovr(np.array([0, 1, 2]), np.eye(3) * 5.0)


def test_multilabel_auroc_matches_sklearn():
    rng = np.random.default_rng(2)
    y = (rng.random((50, 5)) > 0.6).astype(int)
    scores = y * 0.8 + rng.normal(size=(50, 5))
    out = clf.multilabel_auroc(y, scores)
    expected = skm.roc_auc_score(y, scores, average=None)
    np.testing.assert_allclose(out["per_class"], expected, rtol=1e-12)
    assert out["mean"] == pytest.approx(expected.mean())
    y[:, 3] = 0  # one-valued column: NaN, left out of the mean
    with pytest.warns(RuntimeWarning, match=r"\[3\]"):
        out = clf.multilabel_auroc(y, scores)
    assert math.isnan(out["per_class"][3])
    assert out["mean"] == pytest.approx(np.mean([expected[c] for c in (0, 1, 2, 4)]))


def test_accuracy_from_probs_and_predictions():
    labels = np.array([0, 1, 2, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    assert clf.accuracy(labels, probs) == pytest.approx(0.5)
    assert clf.accuracy(labels, np.array([0, 1, 2, 2])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="integer predictions"):
        clf.accuracy(labels, np.array([0.2, 0.7, 0.5, 0.1]))


def test_precision_recall_f1_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 80)
    pred = np.where(rng.random(80) < 0.6, labels, rng.integers(0, 4, 80))
    pred[pred == 3] = 0  # class 3 never predicted: precision 0 by zero_division=0
    out = clf.precision_recall(labels, pred, num_classes=5)  # class 4 absent everywhere
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(5), zero_division=0)
    for c in range(5):
        assert out[c]["precision"] == pytest.approx(p[c])
        assert out[c]["recall"] == pytest.approx(r[c])
        assert out[c]["f1"] == pytest.approx(f[c])
        assert out[c]["support"] == s[c]
    for average in ("macro", "weighted", "micro"):
        expected = skm.f1_score(labels, pred, labels=range(5), average=average, zero_division=0)
        assert clf.f1(labels, pred, 5, average) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        clf.precision_recall(labels, pred, num_classes=3)
