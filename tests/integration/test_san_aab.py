"""The one trainer end to end on the real SAN+AAB network and the synthetic BraTS pipeline (slow): a run stopped by
SIGTERM and rerun reproduces the uninterrupted run's losses step for step, then evaluates and writes the report.
The trainer's behaviours one by one are tested on a toy method in tests/engine/test_trainer.py."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gazejax import methods
from tests.conftest import resume_after_sigterm, tiny_brats_config

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
    resume_after_sigterm(monkeypatch, lambda w: train.train_and_evaluate(cfg, w, method), interrupted, 3, _losses,
                         reference)
    assert os.path.exists(os.path.join(interrupted, "report.md"))
