"""Seeded, explicit data splits: K-fold test folds, a validation hold-out, and training-data ratios.

Splits are computed from sorted ids and a seed only, so every method run with the same (seed, fold) sees exactly
the same cases. Groups (e.g. patient ids) never straddle two parts; strata (e.g. labels) are spread evenly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _group_order(ids: Sequence[str], groups: Sequence[str] | None, strata: Sequence | None,
                 seed: int) -> list[list[int]]:
    """Groups of indices, shuffled, then ordered by stratum round-robin so that folds are stratified."""
    groups = list(ids) if groups is None else list(groups)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(str(g), []).append(i)
    keys = sorted(by_group)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    if strata is None:
        return [by_group[k] for k in keys]
    # stratum of a group = stratum of its first member; deal groups stratum by stratum
    by_stratum: dict[str, list[str]] = {}
    for k in keys:
        by_stratum.setdefault(str(strata[by_group[k][0]]), []).append(k)
    ordered: list[str] = []
    for s in sorted(by_stratum):
        ordered.extend(by_stratum[s])
    return [by_group[k] for k in ordered]


def kfold(ids: Sequence[str], num_folds: int, fold: int, seed: int = 0, groups: Sequence[str] | None = None,
          strata: Sequence | None = None) -> tuple[list[str], list[str]]:
    """(train_ids, test_ids) of fold `fold` of a seeded `num_folds`-fold split (sklearn KFold semantics when no
    groups/strata: fold f takes every num_folds-th group of the shuffled order, starting at f)."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold {fold} is outside 0..{num_folds - 1}")
    order = _group_order(ids, groups, strata, seed)
    if len(order) < num_folds:
        raise ValueError(f"{len(order)} groups cannot make {num_folds} folds")
    test_idx = sorted(i for n, g in enumerate(order) if n % num_folds == fold for i in g)
    test = {ids[i] for i in test_idx}
    return [i for i in ids if i not in test], [ids[i] for i in test_idx]


def holdout(ids: Sequence[str], fraction: float, seed: int = 0, groups: Sequence[str] | None = None,
            strata: Sequence | None = None, minimum: int = 1) -> tuple[list[str], list[str]]:
    """(rest, held_out): a seeded share `fraction` of the groups (at least `minimum` when fraction > 0)."""
    order = _group_order(ids, groups, strata, seed)
    n = 0 if fraction <= 0 else max(minimum, int(round(fraction * len(order))))
    n = min(n, max(0, len(order) - 1))
    if strata is not None and n:  # take evenly across the stratum-ordered list
        picks = set(np.linspace(0, len(order) - 1, n).round().astype(int).tolist())
    else:
        picks = set(range(n))
    held = {ids[i] for k, g in enumerate(order) if k in picks for i in g}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


RATIO_POOLS = ("all", "preferred")


def ratio_subset(ids: Sequence[str], ratio: float, seed: int = 0, prefer: Sequence[str] | None = None,
                 pool: str = "all", what: str = "pool") -> list[str]:
    """A seeded subset of `round(ratio * len(pool))` ids (at least one), in the order of `ids`.

    pool="all": drawn from `ids`. pool="preferred": drawn only from the ids also in `prefer` (e.g. the
    gaze-annotated cases: Huang et al. train on "a part of training data that have collected gaze data", so a
    ratio is a share of those). `what` names the setting in error messages (e.g. "data.ratio_pool").
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"data ratio must be in (0, 1], got {ratio}")
    if pool not in RATIO_POOLS:
        raise ValueError(f"{what}: unknown ratio pool {pool!r}; expected one of {', '.join(RATIO_POOLS)}")
    if pool == "preferred":
        if prefer is None:
            raise ValueError(f"{what}='preferred' needs the preferred ids (e.g. the cases with gaze)")
        candidates = sorted(set(ids) & set(prefer))
        if not candidates:
            raise ValueError(f"{what}='preferred': none of the {len(ids)} candidate ids is preferred (no case with "
                             f"gaze in the training pool?)")
    else:
        candidates = sorted(ids)
    n = max(1, int(round(ratio * len(candidates))))
    rng = np.random.default_rng(seed + 1_000_003)
    picked = set(rng.permutation(candidates)[:n].tolist())
    return [i for i in ids if i in picked]


def take_stratified(ids: Sequence[str], n: int, seed: int = 0, groups: Sequence[str] | None = None,
                    strata: Sequence | None = None) -> tuple[list[str], list[str]]:
    """(rest, taken): whole groups holding `n` ids in all, drawn with a seed, each stratum in proportion.

    Counts ids (e.g. images), not groups (patients), so "100 test images" means 100 even when patients have
    several images. Each stratum's quota is its share of `n` ids (largest remainders rounded up); groups are
    visited in seeded order and taken when their ids fit every stratum's remaining quota (a patient's images may
    lie in several strata); a shortfall is then filled from any group that fits the gap (for n > half the ids,
    the ids left out are chosen this way instead). The count is exact unless every group left is larger than the
    gap (rare with one-image patients around); it then misses below `n` (n <= half the ids) or above it. Both
    lists keep the input order.
    """
    if not 0 <= n <= len(ids):
        raise ValueError(f"cannot take {n} of {len(ids)} ids")
    if 2 * n > len(ids):  # greedy filling is exact for small counts: choose what stays out
        taken, rest = take_stratified(ids, len(ids) - n, seed, groups, strata)
        return rest, taken
    order = _group_order(ids, groups, None, seed)  # seeded group order; strata enter through the quotas
    labels = [str(s) for s in strata] if strata is not None else [""] * len(ids)
    counts = [{s: sum(labels[i] == s for i in g) for s in {labels[i] for i in g}} for g in order]
    names = sorted(set(labels))
    exact = n * np.array([labels.count(s) for s in names], np.float64) / max(1, len(ids))
    quota = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - quota), kind="stable")[:n - int(quota.sum())]:
        quota[k] += 1
    left = dict(zip(names, quota.tolist()))
    taken: list[int] = []
    chosen = [False] * len(order)
    for pass_ in (0, 1):  # 0: groups that fit every stratum's remaining quota; 1: the shortfall, any stratum
        for k, g in enumerate(order):
            fits = all(c <= left[s] for s, c in counts[k].items()) if pass_ == 0 else len(g) <= n - len(taken)
            if not chosen[k] and fits:
                chosen[k] = True
                taken.extend(g)
                for s, c in counts[k].items():
                    left[s] -= c
    picked = {ids[i] for i in taken}
    return [i for i in ids if i not in picked], [i for i in ids if i in picked]


def label_strata(labels: np.ndarray) -> list[str]:
    """Stratum key per example from int classes [N] ("2") or a multi-hot matrix [N, L] ("01001")."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return [str(int(v)) for v in labels]
    return ["".join(str(int(v > 0.5)) for v in row) for row in labels]


def train_val_test(ids: Sequence[str], n_test: int, n_val: int, seed: int = 0, test_seed: int = 0,
                   groups: Sequence[str] | None = None, strata: Sequence | None = None
                   ) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) by id counts with `take_stratified`: the test part depends on `test_seed` only, so it
    stays fixed while `seed` re-draws the validation part (model selection) from the rest."""
    rest, test = take_stratified(ids, n_test, seed=test_seed, groups=groups, strata=strata)
    if strata is not None or groups is not None:
        index = {i: k for k, i in enumerate(ids)}
        pick = lambda values: None if values is None else [values[index[i]] for i in rest]  # noqa: E731
        groups, strata = pick(groups), pick(strata)
    train, val = take_stratified(rest, min(n_val, len(rest)), seed=seed, groups=groups, strata=strata)
    return train, val, test


def scheme_counts(scheme: str, n: int, val_fraction: float) -> tuple[int, int]:
    """(n_test, n_val) for `n` ids under a scheme of shares "train/val/test" (e.g. "70/10/20": 20% test, 10%
    validation) or "trainval/test" (e.g. "983/100": test share 100/1083, validation `val_fraction` of the rest)."""
    try:
        parts = [float(p) for p in str(scheme).split("/")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or min(parts, default=-1) < 0 or sum(parts) <= 0:
        raise ValueError(f"split scheme must be 'train/val/test' (e.g. '70/10/20') or 'trainval/test' (e.g. "
                         f"'983/100'), got {scheme!r}")
    half_up = lambda x: int(np.floor(x + 0.5))  # noqa: E731  (round() would send 2.5 to 2)
    n_test = half_up(n * parts[-1] / sum(parts))
    if len(parts) == 3:
        return n_test, half_up(n * parts[1] / sum(parts))
    return n_test, half_up(val_fraction * (n - n_test))
