"""Image-count splits for chest X-ray schemes: exact counts with patient groups, strata in proportion, a test part
that depends on its own seed only, scheme parsing."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.data import splits


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"img{i:04d}" for i in range(n)]
    patients = [f"p{int(v)}" for v in rng.integers(0, int(n * 0.7), n)]  # ~1.4 images per patient
    strata = [str(int(v)) for v in rng.integers(0, 3, n)]
    return ids, patients, strata


def test_take_stratified_counts_groups_and_strata():
    ids, patients, strata = _data()
    for n in (0, 1, 9, 30, 89, 90):
        rest, taken = splits.take_stratified(ids, n, seed=3, groups=patients, strata=strata)
        assert len(taken) == n and sorted(rest + taken) == sorted(ids)
        assert not {patients[ids.index(i)] for i in taken} & {patients[ids.index(i)] for i in rest}
        assert [i for i in ids if i in set(taken)] == taken  # input order kept
    _, taken = splits.take_stratified(ids, 30, seed=3, groups=patients, strata=strata)
    for s in "012":  # proportional allocation: each stratum within 1 image (+ a patient's size) of its share
        share = sum(x == s for x in strata) * 30 / len(ids)
        got = sum(strata[ids.index(i)] == s for i in taken)
        assert abs(got - share) <= 2, (s, got, share)
    assert splits.take_stratified(ids, 30, seed=3, groups=patients, strata=strata)[1] == taken
    assert splits.take_stratified(ids, 30, seed=4, groups=patients, strata=strata)[1] != taken
    with pytest.raises(ValueError, match="cannot take"):
        splits.take_stratified(ids, 91)


def test_take_stratified_never_overshoots_big_groups():
    ids = [f"i{k}" for k in range(10)]
    groups = ["a"] * 6 + ["b"] * 4
    _, taken = splits.take_stratified(ids, 5, seed=0, groups=groups)
    assert taken == ids[6:]  # only the 4-image patient fits under 5
    assert splits.take_stratified(ids, 6, seed=0, groups=groups)[1] == ids[:6]


def test_train_val_test_test_part_fixed_by_its_own_seed():
    ids, patients, strata = _data(120)
    parts = [splits.train_val_test(ids, 24, 12, seed=s, test_seed=5, groups=patients, strata=strata)
             for s in range(3)]
    for train, val, test in parts:
        assert len(test) == 24 and len(val) == 12 and len(train) == 84
        assert sorted(train + val + test) == sorted(ids)
        owners = [{patients[ids.index(i)] for i in part} for part in (train, val, test)]
        assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert parts[0][2] == parts[1][2] == parts[2][2]  # test identical across seeds
    assert parts[0][1] != parts[1][1]  # validation re-drawn
    assert splits.train_val_test(ids, 24, 12, seed=0, test_seed=6, groups=patients)[2] != parts[0][2]


def test_scheme_counts_and_label_strata():
    assert splits.scheme_counts("70/10/20", 1083, 0.1) == (217, 108)
    assert splits.scheme_counts("983/100", 1083, 0.1) == (100, 98)
    assert splits.scheme_counts("983/100", 30, 0.1) == (3, 3)  # 30 * 100/1083 = 2.77 -> 3; 27 * 0.1 -> 3
    assert splits.scheme_counts("983/100", 541, 0.2)[0] == 50
    for bad in ("70-30", "1/2/3/4", "a/b", "0/0"):
        with pytest.raises(ValueError, match="split scheme"):
            splits.scheme_counts(bad, 10, 0.1)
    assert splits.label_strata(np.array([2, 0])) == ["2", "0"]
    assert splits.label_strata(np.array([[1, 0, 0.0, 1, 0], [0, 0, 0, 0, 0]])) == ["10010", "00000"]


def test_patients_spanning_strata_count_in_each():
    ids = [f"i{k}" for k in range(6)]
    groups, strata = ["a", "a", "b", "c", "d", "e"], ["0", "1", "0", "1", "0", "1"]
    for seed in range(8):
        _, taken = splits.take_stratified(ids, 2, seed=seed, groups=groups, strata=strata)
        assert sorted(strata[ids.index(i)] for i in taken) == ["0", "1"], (seed, taken)
