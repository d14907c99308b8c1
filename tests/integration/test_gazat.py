"""The tiny end-to-end run of GazAT: the real trainer, data, evaluation and report (slow: it compiles the
method's model and steps; `pytest -m "not slow"` skips it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gazejax import methods
from tests.methods.gazat.test_gazat import _tiny

pytestmark = pytest.mark.slow


def test_tiny_end_to_end_run_writes_every_stage_and_the_report(tmp_path, fast_compile):
    from gazejax.engine import trainer as train

    c = _tiny("gazat", backbone="vit_b_16")
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.num_threads = 1
    c.data.synthetic.update({"dir": str(tmp_path), "images": 24, "seed": 1, "size": (64, 64)})
    c.finetune.label_fractions, c.finetune.subset_draws = (0.2,), 1
    c.pretrain_epochs, c.finetune.epochs, c.eval_every_epochs, c.log_every_steps = 2, 1, 1, 1
    c.eval.batch, c.eval.saliency_grid, c.eval.probe_cs = 8, (8, 8), (0.1, 10.0)
    c.checkpoint.async_save = False
    results = train.train_and_evaluate(c, str(tmp_path / "run"), methods.get(c.method_family))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved) >= {"test@pretrain", "test@finetune_20pct"}
    pre, ft = saved["test@pretrain"], saved["test@finetune_20pct"]
    assert 0 <= pre["probe_auroc"] <= 1 and pre["probe_c"] in (0.1, 10.0) and np.isfinite(pre["attn_nss"])
    assert 0 <= ft["auroc"] <= 1 and np.isfinite(ft["attn_cc"]) and "probe_auroc" not in ft
    assert "gradcam_cc" not in ft  # a ViT has no CAM
    # the fine-tuning starts from the pretraining's last checkpoint (not the epoch with the best probe) and is
    # evaluated with its own last one: the model's training-call count says which weights were used
    pretrain_steps = 2 * (len(results["data_info"]["train_ids"]) // 4)
    distinct = results["data_info"]["label_subsets"]["label_20pct"]
    assert pre["train_calls"] == pretrain_steps
    assert ft["train_calls"] == pretrain_steps + distinct * -(-4 // distinct) // 4  # subset tiled to >= a batch
    assert results["stages"]["pretrain"]["embeddings"].shape[0] == len(results["data_info"]["test_ids"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "linear probe" in report and "finetune_20pct" in report and "pointing game" in report
    assert os.path.exists(tmp_path / "run" / "figures" / "tsne_pretrain.png") and "tsne_pretrain.png" in report
