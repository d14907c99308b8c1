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


def ratio_subset(ids: Sequence[str], ratio: float, seed: int = 0, prefer: Sequence[str] | None = None,
                 pool: str = "all") -> list[str]:
    """A seeded subset of `round(ratio * len(pool))` ids.

    pool="all": drawn from `ids`. pool="preferred": drawn only from `prefer` (e.g. the gaze-annotated cases: Huang
    et al. train on "a part of training data that have collected gaze data").
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"data ratio must be in (0, 1], got {ratio}")
    candidates = sorted(set(ids) & set(prefer)) if (pool == "preferred" and prefer is not None) else sorted(ids)
    n = max(1, int(round(ratio * len(candidates))))
    rng = np.random.default_rng(seed + 1_000_003)
    picked = set(rng.permutation(candidates)[:n].tolist())
    return [i for i in ids if i in picked]
