"""Tests of gazejax.metrics.saliency against hand-computed tiny maps, scipy and a brute-force AUC-Judd."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr

from gazejax.metrics import saliency as sal


def _loop_auc_judd(pred, fixations):
    """Independent AUC-Judd: a loop over the distinct fixated values, as in the MIT benchmark's Python ports."""
    pred, fixations = pred.ravel(), fixations.ravel() > 0
    points = [(0.0, 0.0)]
    for t in sorted(set(pred[fixations].tolist()), reverse=True):
        above = pred >= t
        points.append(((above & ~fixations).sum() / (~fixations).sum(), (above & fixations).sum() / fixations.sum()))
    points.append((1.0, 1.0))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def test_kl_div_hand_value_and_identity():
    pred = np.array([[1.0, 3.0]])  # P = [1/4, 3/4]
    gt = np.array([[2.0, 2.0]])  # Q = [1/2, 1/2]
    assert sal.kl_div(pred, gt) == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    rng = np.random.default_rng(0)
    m = rng.random((6, 7))
    assert sal.kl_div(m, 3.0 * m) == pytest.approx(0.0, abs=1e-12)
    # Where Q = 0 the term vanishes; where P = 0 and Q > 0 it is ln(eps + Q / eps), large but finite.
    assert sal.kl_div(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        0.5 * math.log(sal.EPS + 0.5 / (1.0 + sal.EPS)) + 0.5 * math.log(sal.EPS + 0.5 / sal.EPS))
    with pytest.raises(ValueError, match="non-negative"):
        sal.kl_div(np.array([-1.0, 2.0]), np.array([1.0, 1.0]))


def test_cc_matches_scipy_pearsonr():
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 9)), rng.random((8, 9))
    b = b + 0.5 * a
    assert sal.cc(a, b) == pytest.approx(pearsonr(a.ravel(), b.ravel())[0], rel=1e-12)
    assert sal.cc(a, 2 * a + 1) == pytest.approx(1.0)
    assert sal.cc(a, -a) == pytest.approx(-1.0)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert math.isnan(sal.cc(np.ones((3, 3)), a[:3, :3]))


def test_sim_hand_value():
    pred = np.array([0.0, 1.0, 2.0, 3.0])  # min-max [0, 1/3, 2/3, 1] / 2 -> [0, 1/6, 1/3, 1/2]
    gt = np.array([3.0, 2.0, 1.0, 0.0])  # -> [1/2, 1/3, 1/6, 0]
    assert sal.sim(pred, gt) == pytest.approx(1.0 / 3.0)  # minima [0, 1/6, 1/6, 0]
    assert sal.sim(pred, 5 * pred + 2) == pytest.approx(1.0)  # min-max removes scale and offset
    assert sal.sim(pred, np.zeros(4)) == 0.0  # an all-zero map stays zero (SIM.m)
    assert sal.histogram_intersection is sal.sim
    with pytest.warns(RuntimeWarning, match="constant"):
        assert math.isnan(sal.sim(np.full(4, 2.0), gt))


def test_nss_hand_value():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    fixations = np.array([[0, 0], [0, 1]])
    # mean 2.5, sample std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3)
    assert sal.nss(pred, fixations) == pytest.approx(1.5 / math.sqrt(5.0 / 3.0))
    # fixation counts > 1 count once; two fixated pixels average their standardised values
    assert sal.nss(pred, np.array([[3, 0], [0, 1]])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no fixated"):
        sal.nss(pred, np.zeros((2, 2)))


def test_auc_judd_hand_value():
    # fixated values 0.2 and 0.4; non-fixated 0.9, 0.6, 0.1.
    # t = 0.4: TPR 1/2, FPR 2/3; t = 0.2: TPR 1, FPR 2/3; curve (0,0) (2/3,1/2) (2/3,1) (1,1):
    # area = 2/3 * 1/4 + 0 + 1/3 * 1 = 1/2.
    pred = np.array([[0.9, 0.2, 0.6, 0.4, 0.1]])
    fixations = np.array([[0, 1, 0, 1, 0]])
    assert sal.auc_judd(pred, fixations) == pytest.approx(0.5)
    assert sal.auc_judd(np.array([0.1, 0.9, 0.3, 0.8]), np.array([0, 1, 0, 1])) == pytest.approx(1.0)


def test_auc_judd_matches_loop_with_ties():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 6, (10, 12)).astype(np.float64)  # many ties
    fixations = rng.random((10, 12)) > 0.8
    assert sal.auc_judd(pred, fixations) == pytest.approx(_loop_auc_judd(pred, fixations), rel=1e-12)
    smooth = rng.random((10, 12))
    assert sal.auc_judd(smooth, fixations) == pytest.approx(_loop_auc_judd(smooth, fixations), rel=1e-12)


def test_shape_and_finiteness_checks():
    with pytest.raises(ValueError, match="shape"):
        sal.cc(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        sal.sim(np.array([np.nan, 1.0]), np.array([1.0, 2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(sal.kl_div(np.ones((2, 2)), np.ones((2, 2))), float)
