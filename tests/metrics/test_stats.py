"""Tests of gazejax.metrics.stats against hand-computed ANOVA / t statistics."""

import math

import numpy as np
import pytest
from scipy.stats import f as f_dist
from scipy.stats import t as t_dist

from gazejax.metrics import stats


def test_one_way_anova_hand_value():
    # Means 2 and 5, grand mean 3.5: SSB = 3 * 1.5^2 * 2 = 13.5 (df 1), SSW = 2 + 2 = 4 (df 4) -> F = 13.5.
    out = stats.one_way_anova([1, 2, 3], [4, 5, 6])
    assert out["F"] == pytest.approx(13.5)
    assert out["p"] == pytest.approx(f_dist.sf(13.5, 1, 4))


def test_one_way_anova_drops_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="dropped 2 values"):
        out = stats.one_way_anova([1, 2, np.nan, 3], [4, np.nan, 5, 6])
    assert out["F"] == pytest.approx(13.5)
    with pytest.raises(ValueError, match="at least 2 groups"):
        stats.one_way_anova([1, 2, 3])


def test_paired_ttest_hand_value():
    # d = [1, 1, 2, 1]: mean 1.25, sample sd 0.5, t = 1.25 / (0.5 / 2) = 5 with 3 dof.
    out = stats.paired_ttest([1, 2, 3, 4], [0, 1, 1, 3])
    assert out["t"] == pytest.approx(5.0)
    assert out["p"] == pytest.approx(2 * t_dist.sf(5.0, 3))
    assert out["n"] == 4 and out["mean_diff"] == pytest.approx(1.25)


def test_paired_ttest_drops_incomplete_pairs():
    with pytest.warns(RuntimeWarning, match="dropped 2 pairs"):
        out = stats.paired_ttest([1, 2, np.nan, 3, 4, 7], [0, 1, 5, 1, 3, np.nan])
    assert out["n"] == 4 and out["t"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_ttest([1, 2], [1, 2, 3])
    with pytest.warns(RuntimeWarning, match="needs 2"):
        out = stats.paired_ttest([1.0], [0.0])
    assert math.isnan(out["t"]) and out["n"] == 1 and out["mean_diff"] == 1.0


def test_mean_std_uses_sample_std():
    mean, std = stats.mean_std([2.0, 4.0, 4.0, 6.0])
    assert mean == pytest.approx(4.0)
    assert std == pytest.approx(math.sqrt(8.0 / 3.0))  # ddof=1: squared deviations 4+0+0+4 over n-1 = 3
    with pytest.warns(RuntimeWarning, match="dropped 1"):
        assert stats.mean_std([1.0, np.nan, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    single = stats.mean_std([5.0])
    assert single[0] == 5.0 and math.isnan(single[1])


def test_paired_bootstrap_test_analytic_cases():
    x = np.random.default_rng(0).normal(size=40)
    mean = lambda v: (lambda idx: float(np.mean(v[idx])))  # noqa: E731
    shifted = stats.paired_bootstrap_test(mean(x + 0.25), mean(x), 40, n_boot=200)
    # a constant shift is the same in every paired resample: the interval collapses onto it and p is 0
    assert shifted["diff"] == pytest.approx(0.25) and shifted["ci"] == pytest.approx((0.25, 0.25))
    assert shifted["p"] == 0.0 and shifted["n"] == 40 and shifted["n_boot"] == 200
    same = stats.paired_bootstrap_test(mean(x), mean(x), 40, n_boot=200)
    assert same["diff"] == 0.0 and same["p"] == 1.0
    # pure noise around the same mean: the interval covers 0 and p is large; a and b swapped mirrors everything
    y = x + np.random.default_rng(1).normal(scale=0.01, size=40)
    ab, ba = (stats.paired_bootstrap_test(mean(a), mean(b), 40, n_boot=300) for a, b in ((x, y), (y, x)))
    assert ab["ci"][0] < 0 < ab["ci"][1] and ab["p"] > 0.05
    assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["p"] == pytest.approx(ba["p"])
    assert ab["ci"] == pytest.approx((-ba["ci"][1], -ba["ci"][0]))
    with pytest.raises(ValueError, match="at least 2 items"):
        stats.paired_bootstrap_test(mean(x), mean(x), 1)
