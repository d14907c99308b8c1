"""Linear probing on frozen features: L2-regularised logistic regression fitted by L-BFGS (scipy), with the
regularisation swept and chosen on a validation split (GazAT Sec. 2.5.3, "linear probing accuracy").

The objective is scikit-learn's `LogisticRegression(C=c)` (lbfgs): C * sum_i log-loss_i + ||W||^2 / 2, intercept
not penalised; multinomial (softmax) for K >= 3 classes, one binary problem otherwise. Multi-label targets
`[N, K]` fit one binary problem per column (one-vs-rest), skipping unknown labels. Features are standardised with the
training split's mean and std before fitting.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import optimize
from scipy.special import expit, log_softmax, softmax

DEFAULT_CS = tuple(10.0 ** np.arange(-4, 3))  # 1e-4 .. 1e2


def _objective_multinomial(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, c: float):
    d, k = x.shape[1], onehot.shape[1]
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    logits = x @ w + b
    logp = log_softmax(logits, axis=1)
    resid = np.exp(logp) - onehot  # d(-log p_y)/d logits
    loss = -c * np.sum(onehot * logp) + 0.5 * np.sum(w * w)
    grad = np.concatenate([(c * x.T @ resid + w).ravel(), c * resid.sum(0)])
    return loss, grad


def _objective_binary(theta: np.ndarray, x: np.ndarray, y: np.ndarray, c: float):
    w, b = theta[:-1], theta[-1]
    t = x @ w + b
    # log(1 + exp(-t)) for y = 1 and log(1 + exp(t)) for y = 0, stably
    loss = c * np.sum(np.logaddexp(0.0, np.where(y > 0.5, -t, t))) + 0.5 * w @ w
    resid = expit(t) - y
    return loss, np.concatenate([c * x.T @ resid + w, [c * resid.sum()]])


def _minimize(fun, theta0: np.ndarray, args: tuple, max_iter: int, tol: float) -> np.ndarray:
    res = optimize.minimize(fun, theta0, args=args, jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-15})
    return res.x


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, num_classes: int | None = None, *,
                 max_iter: int = 2000, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, K'], b [K']) of L2 logistic regression on `x [N, D]` (see the module docstring).

    y: int classes `[N]` -> K' = K columns (multinomial, K >= 3) or 1 column (binary, P(class 1)); or 0/1 (NaN =
    unknown) targets `[N, K]` -> K binary columns fitted independently.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    if y.ndim == 2:
        cols = [fit_logistic(x[np.isfinite(y[:, k])], y[np.isfinite(y[:, k]), k].astype(int), c, 2,
                             max_iter=max_iter, tol=tol) for k in range(y.shape[1])]
        return np.concatenate([w for w, _ in cols], axis=1), np.concatenate([b for _, b in cols])
    k = int(num_classes or (y.max() + 1))
    if k <= 2:
        theta = _minimize(_objective_binary, np.zeros(x.shape[1] + 1), (x, (y == 1).astype(np.float64), c),
                          max_iter, tol)
        return theta[:-1, None], theta[-1:]
    onehot = np.eye(k)[y.astype(int)]
    theta = _minimize(_objective_multinomial, np.zeros(x.shape[1] * k + k), (x, onehot, c), max_iter, tol)
    return theta[:-k].reshape(x.shape[1], k), theta[-k:]


def predict_proba(x: np.ndarray, w: np.ndarray, b: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Probabilities `[N, K]`: softmax of a multinomial fit, sigmoid per column of a multi-label fit, and
    [1 - p, p] for a single binary column."""
    logits = np.asarray(x, np.float64) @ w + b
    if multilabel:
        return expit(logits)
    if w.shape[1] == 1:
        p = expit(logits[:, 0])
        return np.stack([1 - p, p], axis=1)
    return softmax(logits, axis=1)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Each array minus the training mean, over the training std (constant features: std 1)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 eval_x: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float],
                 cs: Sequence[float] = DEFAULT_CS, num_classes: int | None = None) -> dict:
    """Fits one probe per C on standardised `train_x`, keeps the C with the best `score(val_y, val_probs)` (higher
    is better; NaN scores lose; ties go to the earlier C: list `cs` from strong to weak regularisation), and returns
    {"c", "val_score", "val_probs", "probs" (of `eval_x`), "scores" (per C)}."""
    multilabel = np.asarray(train_y).ndim == 2
    tr, va, ev = standardize(np.asarray(train_x, np.float64), np.asarray(val_x, np.float64),
                             np.asarray(eval_x, np.float64))
    best, scores = None, {}
    for c in cs:
        w, b = fit_logistic(tr, train_y, float(c), num_classes)
        val_probs = predict_proba(va, w, b, multilabel)
        s = scores[float(c)] = float(score(val_y, val_probs))
        if best is None or (np.isfinite(s) and not s <= best["val_score"]):  # "not <=": also beats a NaN best
            best = {"c": float(c), "val_score": s, "val_probs": val_probs, "w": w, "b": b}
    return {"c": best["c"], "val_score": best["val_score"], "val_probs": best["val_probs"],
            "probs": predict_proba(ev, best["w"], best["b"], multilabel), "scores": scores}
