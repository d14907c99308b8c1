"""The tiny end-to-end run of SAN+AAB 2D (cxr_san): the real trainer, data, evaluation and report (slow: it compiles the
method's model and steps; `pytest -m "not slow"` skips it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from configs import cxr_san as cxr_config

from gazejax import methods
from gazejax.methods.cxr_san import spec as cxr_san, report as cxr_san_report

pytestmark = pytest.mark.slow


def test_tiny_end_to_end_run_writes_report_with_auroc_table(tmp_path, fast_compile):
    from gazejax.engine import trainer as train

    c = cxr_config.get_config("method=ours,backbone=resnet18")
    c.data.image_size = (64, 64)
    c.data.gaze_grids = cxr_config.gaze_grids((64, 64))
    c.data.cache_dir, c.data.num_threads = str(tmp_path / "cache"), 1
    c.data.synthetic.update({"dir": str(tmp_path), "images": 24, "seed": 1, "size": (64, 64)})
    c.model.update({"resnet_width": 4, "san_width": 2, "aab_heads": 1, "aab_head_dim": 4})
    c.batch_size, c.epochs, c.eval.batch, c.log_every_steps, c.best_n = 4, 2, 8, 1, 2
    c.checkpoint.async_save = False
    train.train_and_evaluate(c, str(tmp_path / "run"), methods.get(c.method_family))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    assert 0.0 <= saved["auroc"] <= 1.0 and saved["best_n_used"] == 2
    tracked = cxr_san_report.tracked_evaluations(str(tmp_path / "run"))
    assert len(tracked) == 2  # one validation per epoch, each with test scores (track_test)
    assert saved["auroc_best_test_n"] == pytest.approx(np.mean([e["test/auroc"] for e in tracked]))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| Average | Atelectasis | Cardiomegaly | Consolidation | Edema | Pleural Effusion |" in report
    assert "mean of the best-N evaluations by validation AUROC" in report and "Parameters (AAB site" in report
    assert "| Backbone, param-matched (SAN + AAB without gaze) |" in report
    assert saved["params_total"] == cxr_san.param_counts(c)["total"]
    pngs = sorted(os.listdir(tmp_path / "run" / "figures"))
    assert "auroc_per_class.png" in pngs and "gaze_0.png" in pngs
    assert all(f"figures/{p}" in report for p in pngs)
