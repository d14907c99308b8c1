"""The one trainer end to end on the real SAN+AAB network and the synthetic BraTS pipeline (slow): a run stopped by
SIGTERM and rerun reproduces the uninterrupted run's losses step for step, then evaluates and writes the report.
The trainer's behaviours one by one are tested on a toy method in tests/engine/test_trainer.py."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gazejax import methods
from tests.conftest import sigterm_at_step, tiny_brats_config

pytestmark = pytest.mark.slow


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_san_aab_resume_after_sigterm_reproduces_losses_and_reports(tiny_brats_root, tmp_path, monkeypatch,
                                                                   fast_compile):
    from gazejax.engine import trainer as train

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), epochs=2)
    method = methods.get(cfg.method_family)
    full = str(tmp_path / "full")
    results = train.train_and_evaluate(cfg, full, method)
    reference = _losses(full)
    assert len(reference) >= 4 and all(np.isfinite(v) for v in reference.values())
    assert np.isfinite(results["test"]["metrics"]["dice_WT"])
    for name in ("report.md", "results.json", "cases.json", "config.json"):
        assert os.path.exists(os.path.join(full, name)), name

    interrupted = str(tmp_path / "interrupted")
    original = sigterm_at_step(monkeypatch, 3)
    with pytest.raises(train.Preempted):
        train.train_and_evaluate(cfg, interrupted, method)
    assert max(_losses(interrupted)) == 3
    monkeypatch.setattr(train.ProgressBar, "update", original)
    train.train_and_evaluate(cfg, interrupted, method)  # the same command again: resumes at step 4
    resumed = _losses(interrupted)
    assert sorted(resumed) == sorted(reference)
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [reference[s] for s in sorted(reference)],
                               rtol=1e-6)
    assert os.path.exists(os.path.join(interrupted, "report.md"))
