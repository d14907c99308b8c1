"""The trainer's data iterator on the toy method: Grain worker processes give the same batches as in-process reading
(augmentation included), resume from a saved position, and refuse a position saved with another worker count (it
would resume at the wrong batch)."""
from __future__ import annotations

import numpy as np
import pytest

from gazejax.engine import trainer as train
from tests.engine import toy


def _iterator(tmp_path, workers, state=None):
    cfg = toy.config(**{"data.num_workers": workers})
    method = toy.make_method(epochs=3, n_train=16, noise=0.5)
    trainer = train.Trainer(cfg, str(tmp_path / f"run{workers}"), method)
    data = method.make_data(cfg)
    try:
        return trainer.train_iterator(data, trainer.stages[0], state)
    finally:
        trainer.close()  # the iterator outlives the trainer's log writers


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_workers_same_batches_and_resume(tmp_path):
    it0 = _iterator(tmp_path, 0)
    reference = [next(it0) for _ in range(5)]  # 16 examples, batch 8: 5 batches cross two epoch boundaries
    it0.close()
    it2 = _iterator(tmp_path, 2)
    got = [next(it2) for _ in range(3)]
    state = it2.get_state()
    it2.close()
    for a, b in zip(reference, got):
        _assert_same(a, b)  # augmentation noise included: seeded by the example's global index, not the worker
    assert state["num_workers"] == 2
    resumed = _iterator(tmp_path, 2, state)
    for a in reference[3:]:
        _assert_same(a, next(resumed))
    resumed.close()
    with pytest.raises(ValueError, match=r"num_workers=2 but this run uses 0"):
        _iterator(tmp_path, 0, state)


def test_batches_are_augmented_and_reshuffled_per_epoch(tmp_path):
    """The checks above can fail: x carries per-example noise, and epoch 2 visits the examples in another order."""
    it0 = _iterator(tmp_path, 0)
    batches = [next(it0) for _ in range(4)]
    it0.close()
    clean = {float(e["y"]): e["x"] for e in toy.examples(16, seed=1)}
    noisy = np.concatenate([b["x"] for b in batches[:2]])
    assert 0.1 < np.abs(noisy - np.stack([clean[float(y)] for y in batches[0]["y"].tolist()
                                          + batches[1]["y"].tolist()])).mean() < 1.0
    epoch1, epoch2 = (np.concatenate([b["y"] for b in batches[i:i + 2]]) for i in (0, 2))
    assert sorted(epoch1) == sorted(epoch2) and not np.array_equal(epoch1, epoch2)


def test_untagged_state_is_an_in_process_position(tmp_path):
    it0 = _iterator(tmp_path, 0)
    reference = [next(it0) for _ in range(2)]
    untagged = it0.get_state()["grain"]  # what checkpoints held before the worker count was recorded
    reference.append(next(it0))
    it0.close()
    resumed = _iterator(tmp_path, 0, untagged)
    _assert_same(reference[2], next(resumed))
    with pytest.raises(AssertionError):
        _assert_same(reference[1], reference[2])  # consecutive batches differ, so the check above can fail
    with pytest.raises(ValueError, match=r"num_workers=0 but this run uses 1"):
        _iterator(tmp_path, 1, untagged)
