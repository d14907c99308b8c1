"""The trainer's data iterator: Grain worker processes give the same batches as in-process reading, resume from a
saved position, and refuse a position saved with another worker count (it would resume at the wrong batch)."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax import methods
from gazejax.engine import trainer as train
from tests.conftest import tiny_brats_config


def _iterator(root, tmp_path, workers, state=None):
    cfg = tiny_brats_config(root, str(tmp_path / "cache"), batch_size=2, epochs=3, **{"data.num_workers": workers})
    trainer = train.Trainer(cfg, str(tmp_path / f"run{workers}"), methods.get(cfg.method_family))
    data = trainer.method.make_data(cfg)
    try:
        return trainer.train_iterator(data, trainer.stages[0], state)
    finally:
        trainer.close()  # the iterator outlives the trainer's log writers


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_workers_same_batches_and_resume(tiny_brats_root, tmp_path):
    it0 = _iterator(tiny_brats_root, tmp_path, 0)
    reference = [next(it0) for _ in range(5)]
    it0.close()
    it2 = _iterator(tiny_brats_root, tmp_path, 2)
    got = [next(it2) for _ in range(3)]
    state = it2.get_state()
    it2.close()
    for a, b in zip(reference, got):
        _assert_same(a, b)  # augmented crops included: seeded by the example's global index, not the worker
    assert state["num_workers"] == 2
    resumed = _iterator(tiny_brats_root, tmp_path, 2, state)
    for a in reference[3:]:
        _assert_same(a, next(resumed))
    resumed.close()
    with pytest.raises(ValueError, match=r"num_workers=2 but this run uses 0"):
        _iterator(tiny_brats_root, tmp_path, 0, state)


def test_untagged_state_is_an_in_process_position(tiny_brats_root, tmp_path):
    it0 = _iterator(tiny_brats_root, tmp_path, 0)
    reference = [next(it0) for _ in range(2)]
    untagged = it0.get_state()["grain"]  # what checkpoints held before the worker count was recorded
    reference.append(next(it0))
    it0.close()
    resumed = _iterator(tiny_brats_root, tmp_path, 0, untagged)
    _assert_same(reference[2], next(resumed))
    with pytest.raises(AssertionError):
        _assert_same(reference[1], reference[2])  # consecutive batches differ, so the check above can fail
    with pytest.raises(ValueError, match=r"num_workers=0 but this run uses 1"):
        _iterator(tiny_brats_root, tmp_path, 1, untagged)
