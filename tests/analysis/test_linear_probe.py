"""gazejax.analysis.linear_probe against scikit-learn: multinomial, binary and one-vs-rest multi-label logistic regression at
several C, and the validation sweep against StandardScaler + LogisticRegression at the chosen C."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from gazejax.analysis import linear_probe as lp


def _data(n=80, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.argmax(x[:, :k] + 0.8 * rng.normal(size=(n, k)), axis=1)
    return x, y


def _sklearn(x, y, c):
    return LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(x, y)


@pytest.mark.parametrize("c", [0.01, 1.0, 30.0])
def test_multinomial_fit_matches_sklearn(c):
    x, y = _data()
    w, b = lp.fit_logistic(x, y, c)
    sk = _sklearn(x, y, c)
    np.testing.assert_allclose(w.T, sk.coef_, atol=2e-5)
    np.testing.assert_allclose(b, sk.intercept_, atol=2e-5)
    np.testing.assert_allclose(lp.predict_proba(x, w, b), sk.predict_proba(x), atol=1e-6)


def test_binary_and_multilabel_fits_match_sklearn():
    x, y = _data(k=2, seed=1)
    w, b = lp.fit_logistic(x, y, 0.5)
    sk = _sklearn(x, y, 0.5)
    np.testing.assert_allclose(w.T, sk.coef_, atol=2e-5)
    np.testing.assert_allclose(lp.predict_proba(x, w, b), sk.predict_proba(x), atol=1e-6)
    rng = np.random.default_rng(2)
    targets = (x[:, :3] + rng.normal(size=(len(x), 3)) > 0).astype(float)
    targets[::7, 1] = np.nan  # unknown labels are left out of that column's fit
    w, b = lp.fit_logistic(x, targets, 2.0)
    probs = lp.predict_proba(x, w, b, multilabel=True)
    for k in range(3):
        known = np.isfinite(targets[:, k])
        sk = _sklearn(x[known], targets[known, k].astype(int), 2.0)
        np.testing.assert_allclose(w[:, k], sk.coef_[0], atol=2e-5)
        np.testing.assert_allclose(probs[:, k], sk.predict_proba(x)[:, 1], atol=1e-6)


def test_probe_sweeps_c_on_validation_and_refits_like_sklearn():
    x, y = _data(n=150, d=10, seed=3)
    tr, va, te = slice(0, 90), slice(90, 120), slice(120, 150)
    score = lambda yy, pp: roc_auc_score(yy, pp, multi_class="ovr")  # noqa: E731
    cs = (1e-3, 1e-1, 10.0)
    out = lp.linear_probe(x[tr], y[tr], x[va], y[va], x[te], score, cs)
    assert set(out["scores"]) == set(cs)
    assert out["c"] == max(cs, key=lambda c: (out["scores"][c], -c))
    scaler = StandardScaler().fit(x[tr])
    sk = _sklearn(scaler.transform(x[tr]), y[tr], out["c"])
    np.testing.assert_allclose(out["probs"], sk.predict_proba(scaler.transform(x[te])), atol=1e-5)
    assert out["val_score"] == pytest.approx(score(y[va], sk.predict_proba(scaler.transform(x[va]))), abs=1e-9)
    # a NaN score never wins: the first C scores NaN, the second 0.5
    calls = iter([np.nan, 0.5])
    nan_first = lp.linear_probe(x[tr], y[tr], x[va], y[va], x[te], lambda yy, pp: next(calls), (1e-3, 1.0))
    assert nan_first["c"] == 1.0 and nan_first["val_score"] == 0.5
