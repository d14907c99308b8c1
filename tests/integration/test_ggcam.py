"""The tiny end-to-end run of GG-CAM: the real trainer, data, evaluation and report (slow: it compiles the
method's model and steps; `pytest -m "not slow"` skips it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from configs import ggcam as ggcam_config

from gazejax import methods

pytestmark = pytest.mark.slow


def test_tiny_end_to_end_run_writes_report_and_results(tmp_path, fast_compile):
    from gazejax.engine import trainer as train

    c = ggcam_config.get_config("preset=demo,backbone=resnet18,method=ggcam")
    c.data.image_size = (64, 64)
    c.data.gaze_grids = {"cam": (2, 2)}
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.num_threads = 1
    c.data.synthetic.update({"dir": str(tmp_path), "images": 24, "seed": 1, "size": (64, 64)})
    c.model.resnet_width = 4
    c.batch_size, c.epochs, c.eval.batch, c.log_every_steps = 4, 2, 8, 1
    c.checkpoint.async_save = False
    results = train.train_and_evaluate(c, str(tmp_path / "run"), methods.get(c.method_family))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert np.isfinite(saved["test"]["auroc"]) and 0.0 <= saved["test"]["auroc"] <= 1.0
    assert saved["test"]["auroc"] == pytest.approx(results["test"]["metrics"]["auroc"])
    assert np.isfinite(saved["test"]["loss"]) and saved["test"]["alpha"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/lr_scale" in r for r in rows) and any("val/loss" in r for r in rows)  # the plateau's input
    report = (tmp_path / "run" / "report.md").read_text()
    assert "GG-CAM report" in report and "Eq. 12" in report and "AUROC" in report
    pngs = [f for f in os.listdir(tmp_path / "run" / "figures") if f.startswith("cam_")]
    assert pngs and all(f"figures/{f}" in report for f in pngs)
