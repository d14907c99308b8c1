"""Engine faults on the toy least-squares method (tests/engine/toy.py): a blow-up keeps only checkpoints whose state
produced a finite loss (so the advised rerun with a lower learning rate works), a second run on a busy workdir stops
with one line naming the holder, an incompatible config names the differing fields, a corrupt newest checkpoint
falls back to the newest intact one."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from gazejax.engine import checkpoint, trainer as train
from tests.engine import toy


def _steps(workdir):
    ckpt = checkpoint.Checkpointer(workdir, keep_last=2, async_save=False)
    try:
        return sorted(ckpt.manager.all_steps())
    finally:
        ckpt.close()


def test_blow_up_keeps_no_exploded_checkpoint_and_the_advised_rerun_works(tmp_path):
    """Adam at lr 5e18: the first update moves the weights to ~5e18, whose loss overflows to inf. Today that state is
    saved as "the last good checkpoint" (step 1) and the rerun at lr 0.05 resumes from it and fails at once."""
    method = toy.make_method(epochs=2)
    workdir = str(tmp_path / "run")
    with pytest.raises(train.NonFiniteLossError, match=r"after step 0 of stage .fit. has its loss not finite.*no checkpoint kept.*optim.lr") as err:
        train.train_and_evaluate(toy.config(**{"optim.lr": 5e18, "checkpoint.every_steps": 1}), workdir, method)
    assert "\n" not in str(err.value)
    assert _steps(workdir) == []
    results = train.train_and_evaluate(toy.config(**{"checkpoint.every_steps": 1}), workdir, method)
    assert np.isfinite(results["test"]["metrics"]["neg_mse"])
    reference = train.train_and_evaluate(toy.config(**{"checkpoint.every_steps": 1}), str(tmp_path / "fresh"), method)
    assert results["test"]["metrics"] == reference["test"]["metrics"]


def test_nan_mid_run_keeps_the_checkpoints_before_it(tmp_path):
    """A NaN input at step 11: checkpoints 1..10 were verified; the newest kept are 9 and 10 and load finite."""
    method = toy.make_method(epochs=2, poison_after=80)  # 8 examples per step: step 11 gets the NaN
    workdir = str(tmp_path / "run")
    cfg = toy.config(**{"checkpoint.every_steps": 1})
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint: 10"):
        train.train_and_evaluate(cfg, workdir, method)
    assert _steps(workdir)[-2:] == [9, 10]
