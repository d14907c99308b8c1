"""Seeded splits: folds partition the ids, groups never straddle parts, strata spread, ratios are exact."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.data import splits

IDS = [f"c{i:03d}" for i in range(23)]


def test_kfold_partitions_and_is_deterministic():
    tests = []
    for fold in range(5):
        train, test = splits.kfold(IDS, 5, fold, seed=7)
        assert set(train) | set(test) == set(IDS) and not set(train) & set(test)
        assert splits.kfold(IDS, 5, fold, seed=7) == (train, test)
        tests += test
    assert sorted(tests) == sorted(IDS)  # every id is tested exactly once
    assert sorted(len(splits.kfold(IDS, 5, f, seed=7)[1]) for f in range(5)) == [4, 4, 5, 5, 5]
    assert splits.kfold(IDS, 5, 0, seed=7) != splits.kfold(IDS, 5, 0, seed=8)


def test_groups_never_straddle_and_strata_spread():
    patients = [f"p{i // 3}" for i in range(len(IDS))]  # 3 studies per patient
    for fold in range(4):
        train, test = splits.kfold(IDS, 4, fold, seed=1, groups=patients)
        p_train = {patients[IDS.index(i)] for i in train}
        p_test = {patients[IDS.index(i)] for i in test}
        assert not p_train & p_test
    strata = ["a"] * 12 + ["b"] * 11
    for fold in range(3):
        _, test = splits.kfold(IDS, 3, fold, seed=0, strata=strata)
        counts = [sum(strata[IDS.index(i)] == s for i in test) for s in "ab"]
        assert abs(counts[0] - 4) <= 1 and abs(counts[1] - 11 / 3) <= 1


def test_holdout_and_ratio_subset():
    rest, held = splits.holdout(IDS, 0.1, seed=0)
    assert len(held) == 2 and set(rest) | set(held) == set(IDS)
    assert len(splits.holdout(IDS, 0.0)[1]) == 0
    sub = splits.ratio_subset(IDS, 0.2, seed=0)
    assert len(sub) == round(0.2 * 23) and set(sub) <= set(IDS)
    prefer = IDS[:10]
    sub = splits.ratio_subset(IDS, 0.5, seed=0, prefer=prefer, pool="preferred")
    assert len(sub) == 5 and set(sub) <= set(prefer)
    with pytest.raises(ValueError, match="ratio"):
        splits.ratio_subset(IDS, 0.0)
    with pytest.raises(ValueError, match="fold"):
        splits.kfold(IDS, 5, 5)
    assert np.all(np.diff([IDS.index(i) for i in sub]) > 0)  # order of the input is kept
