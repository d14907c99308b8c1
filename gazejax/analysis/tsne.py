"""A small exact t-SNE (van der Maaten & Hinton 2008) in numpy, for the embedding figures of a report (a few hundred
points; O(N^2) memory and time per iteration).

Recipe of the reference implementation: PCA to at most 50 dimensions; per-point Gaussian bandwidths found by
bisection so that each conditional distribution has the requested perplexity; symmetrised P = (P + P^T) / 2N;
Student-t similarities in the embedding; gradient descent with momentum 0.5 -> 0.8, delta-bar-delta gains, and early
exaggeration (x12) for the first 100 iterations.
"""
from __future__ import annotations

import numpy as np


def conditional_probabilities(x: np.ndarray, perplexity: float = 30.0, tol: float = 1e-5,
                              max_steps: int = 100) -> np.ndarray:
    """P_{j|i} `[N, N]` (rows sum to 1, zero diagonal) whose rows each have entropy log(perplexity) (nats)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if not 1 <= perplexity < n:
        raise ValueError(f"tsne.py: perplexity must be in [1, {n}) for {n} points, got {perplexity}")
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    target = np.log(perplexity)
    p = np.zeros((n, n))
    for i in range(n):  # one bisection per row (the reference implementation does the same)
        d = np.delete(d2[i], i)
        d = d - d.min()  # shift for stability; it cancels in the normalisation
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(max_steps):
            w = np.exp(-d * beta)
            s = w.sum()
            h = np.log(s) + beta * np.sum(d * w) / s  # entropy of w / s
            if abs(h - target) < tol:
                break
            if h > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    return p


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    x = x - x.mean(0)
    if x.shape[1] <= dims:
        return x
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def tsne(x: np.ndarray, dims: int = 2, perplexity: float = 30.0, iterations: int = 500, learning_rate: float = 0.0,
         seed: int = 0, exaggeration: float = 12.0) -> np.ndarray:
    """Embedding `[N, dims]` of `x [N, D]`. learning_rate 0 = max(N / exaggeration / 4, 50) (the "auto" rule of
    Belkina et al. 2019 / scikit-learn); perplexity is capped at (N - 1) / 3."""
    x = _pca(np.asarray(x, np.float64), 50)
    n = x.shape[0]
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    p = conditional_probabilities(x, perplexity)
    p = np.maximum((p + p.T) / (2 * n), 1e-12)
    lr = learning_rate or max(n / exaggeration / 4, 50.0)
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-4, (n, dims))
    update, gains = np.zeros_like(y), np.ones_like(y)
    for it in range(iterations):
        sq = np.sum(y * y, axis=1)
        num = 1.0 / (1.0 + np.maximum(sq[:, None] + sq[None, :] - 2 * y @ y.T, 0.0))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pm = p * (exaggeration if it < 100 else 1.0)
        w = (pm - q) * num  # dC/dy_i = 4 sum_j (p_ij - q_ij)(y_i - y_j) / (1 + |y_i - y_j|^2)
        grad = 4.0 * (np.diag(w.sum(1)) - w) @ y
        gains = np.where(np.sign(grad) != np.sign(update), gains + 0.2, gains * 0.8).clip(0.01)
        update = (0.5 if it < 250 else 0.8) * update - lr * gains * grad
        y = y + update
        y = y - y.mean(0)
    return y.astype(np.float32)
