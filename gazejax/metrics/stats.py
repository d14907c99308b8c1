"""Significance tests and summaries over per-run or per-image results (one-way ANOVA, paired t-test, mean +- std).

Inputs may contain NaN (e.g. a metric undefined on one image): NaNs are dropped, with a warning that says how many,
before the test runs (within each group for ANOVA, whole pairs for the paired t-test).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats


def _finite_1d(values: Sequence[float] | np.ndarray, name: str, func: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{func}: {name} must be 1-D, got shape {values.shape}")
    if np.isinf(values).any():
        raise ValueError(f"{func}: {name} contains inf")
    return values


def _warn_dropped(func: str, dropped: int, what: str) -> None:
    if dropped:
        warnings.warn(f"{func}: dropped {dropped} {what} containing NaN", RuntimeWarning, stacklevel=3)


def one_way_anova(*groups: Sequence[float] | np.ndarray) -> dict[str, float]:
    """One-way ANOVA across two or more groups of results (scipy.stats.f_oneway).

    NaNs are dropped within each group (warning). Returns {"F": F statistic, "p": p-value}.
    """
    if len(groups) < 2:
        raise ValueError(f"one_way_anova: needs at least 2 groups, got {len(groups)}")
    arrays = [_finite_1d(g, f"group {i}", "one_way_anova") for i, g in enumerate(groups)]
    cleaned = [a[~np.isnan(a)] for a in arrays]
    _warn_dropped("one_way_anova", sum(a.size - c.size for a, c in zip(arrays, cleaned)), "values")
    empty = [i for i, c in enumerate(cleaned) if c.size == 0]
    if empty:
        raise ValueError(f"one_way_anova: groups {empty} have no non-NaN value")
    result = scipy_stats.f_oneway(*cleaned)
    return {"F": float(result.statistic), "p": float(result.pvalue)}


def paired_ttest(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Two-sided paired t-test of a against b (scipy.stats.ttest_rel), e.g. per-image Dice of two methods.

    Pairs where either value is NaN are dropped (warning). Returns {"t", "p", "n": number of pairs used (int),
    "mean_diff": mean of a - b}; t and p are NaN (scipy's convention) with fewer than 2 pairs or zero-variance
    differences.
    """
    a, b = _finite_1d(a, "a", "paired_ttest"), _finite_1d(b, "b", "paired_ttest")
    if a.shape != b.shape:
        raise ValueError(f"paired_ttest: a and b must be paired (same length), got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    _warn_dropped("paired_ttest", int(a.size - keep.sum()), "pairs")
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2:
        warnings.warn(f"paired_ttest: {n} complete pairs, the test needs 2; t and p are NaN", RuntimeWarning,
                      stacklevel=2)
        return {"t": float("nan"), "p": float("nan"), "n": n,
                "mean_diff": float(np.mean(a - b)) if n else float("nan")}
    result = scipy_stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "p": float(result.pvalue), "n": n, "mean_diff": float(np.mean(a - b))}


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(mean, sample standard deviation with ddof=1) of results across folds or runs, NaNs dropped (warning).

    ddof=1 (the unbiased variance estimate, what papers report as "mean +- std over k folds"); the std of a single
    value is NaN, and both are NaN when nothing is left.
    """
    values = _finite_1d(values, "values", "mean_std")
    kept = values[~np.isnan(values)]
    _warn_dropped("mean_std", values.size - kept.size, "values")
    if kept.size == 0:
        return float("nan"), float("nan")
    std = float(np.std(kept, ddof=1)) if kept.size > 1 else float("nan")
    return float(np.mean(kept)), std


def bootstrap_ci(statistic, n: int, n_boot: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of the metrics `statistic(indices) -> {name: value}` computes on
    `indices` [n] of a sample of n items (e.g. images): n_boot resamples with replacement (seeded), interval
    [(1 - level) / 2, (1 + level) / 2] quantiles per metric. A resample where a metric is NaN (e.g. an AUROC whose
    class is absent from it) is left out of that metric's interval, with a warning that counts them; a metric NaN
    in every resample gets (NaN, NaN)."""
    if n < 1:
        raise ValueError(f"bootstrap_ci: needs at least one item, got n={n}")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(int(n_boot)):
        for key, value in statistic(rng.integers(0, n, size=n)).items():
            draws.setdefault(key, []).append(float(value))
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    out = {}
    for key, values in draws.items():
        v = np.asarray(values)
        kept = v[np.isfinite(v)]
        if kept.size < v.size:
            warnings.warn(f"bootstrap_ci: {key}: {v.size - kept.size} of {v.size} resamples gave NaN and were left "
                          f"out", RuntimeWarning, stacklevel=2)
        out[key] = ((float(np.quantile(kept, lo_q)), float(np.quantile(kept, hi_q))) if kept.size
                    else (float("nan"), float("nan")))
    return out


def paired_bootstrap_test(statistic_a, statistic_b, n: int, n_boot: int = 1000, level: float = 0.95, seed: int = 0
                          ) -> dict[str, float | int | tuple[float, float]]:
    """Paired percentile-bootstrap test of a difference in a sample statistic between two methods scored on the same
    n items (e.g. the macro AUROC of two classifiers on one test set): each of `n_boot` resamples (with
    replacement, seeded) is scored by both `statistic_a(indices)` and `statistic_b(indices)` (floats), so the
    pairing of items is kept. Returns {"diff": a - b on the full sample, "ci": the difference's percentile
    interval, "p": two-sided bootstrap p-value 2 min(P(d* <= 0), P(d* >= 0)) capped at 1, "n": n, "n_boot":
    resamples whose difference is finite}. Identical methods give diff 0 and p 1. Resamples with a NaN difference
    (a class absent from the resample) are left out, with a warning that counts them."""
    if n < 2:
        raise ValueError(f"paired_bootstrap_test: needs at least 2 items, got n={n}")
    full = np.arange(n)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        diffs.append(float(statistic_a(idx)) - float(statistic_b(idx)))
    d = np.asarray(diffs)
    kept = d[np.isfinite(d)]
    if kept.size < d.size:
        warnings.warn(f"paired_bootstrap_test: {d.size - kept.size} of {d.size} resamples gave NaN and were left out",
                      RuntimeWarning, stacklevel=2)
    if not kept.size:
        return {"diff": float("nan"), "ci": (float("nan"), float("nan")), "p": float("nan"), "n": int(n),
                "n_boot": 0}
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    p = min(1.0, 2.0 * min(float(np.mean(kept <= 0)), float(np.mean(kept >= 0))))
    return {"diff": float(statistic_a(full)) - float(statistic_b(full)),
            "ci": (float(np.quantile(kept, lo_q)), float(np.quantile(kept, hi_q))), "p": p, "n": int(n),
            "n_boot": int(kept.size)}
