"""GazAT's cases split into train / validation / test, loaded once per process, and the sizes derived from the
training part: the model needs them before the trainer asks for the data (MoCo's queue length, the optimiser steps
of BYOL's momentum schedule)."""
from __future__ import annotations

import json
from typing import Any

from gazejax.data.cxr import pipeline as cxr_pipeline

_LOADED: dict[str, tuple[dict, dict, dict]] = {}


def _key(config) -> str:
    d = config.data
    return json.dumps(d.to_dict() if hasattr(d, "to_dict") else dict(d), sort_keys=True, default=str)


def split_cases(config) -> tuple[dict[str, list], dict[str, Any], dict]:
    """({"train", "val", "test"}: cases, where {"root", "mimic_root", "cache"}, raw reader records by dicom_id) of
    `config.data` (`cxr_pipeline.load_cases` + `split_records`); the last configuration's result is kept."""
    key = _key(config)
    if key not in _LOADED:
        d = config.data
        cases, where, raw = cxr_pipeline.load_cases(config, with_raw=True)
        parts = cxr_pipeline.split_records(cases, d.split, seed=int(d.seed), test_seed=int(d.test_seed),
                                           ratio=float(d.ratio))
        _LOADED.clear()
        _LOADED[key] = (parts, where, raw)
    return _LOADED[key]


def train_size(config) -> int:
    """Number of pretraining images (the training part)."""
    return len(split_cases(config)[0]["train"])


def steps_per_epoch(config, num_train: int | None = None) -> int:
    """Optimiser steps per pretraining epoch, as the trainer counts them (remainder dropped, at least 1)."""
    n = train_size(config) if num_train is None else int(num_train)
    return max(1, n // int(config.batch_size))


def auto_queue_size(num_train: int, batch_size: int, share: float) -> int:
    """MoCo queue length from the data: the largest multiple of the batch within `share` of the training images
    (at least one batch), so the queue never holds a training image more than once per `1 / share` epochs."""
    return max(1, int(share * num_train) // int(batch_size)) * int(batch_size)


def queue_size(config, num_train: int | None = None) -> int:
    """`moco.queue_size`, or (0) `auto_queue_size` of the training part with `moco.queue_share`."""
    given = int(config.moco.queue_size)
    if given > 0:
        return given
    n = train_size(config) if num_train is None else int(num_train)
    return auto_queue_size(n, int(config.batch_size), float(config.moco.queue_share))


def momentum_steps(config, num_train: int | None = None) -> int:
    """K of BYOL's cosine momentum schedule: `byol.total_steps`, or (0) the pretraining's optimiser steps."""
    given = int(config.byol.total_steps)
    return given if given > 0 else int(config.pretrain_epochs) * steps_per_epoch(config, num_train)
