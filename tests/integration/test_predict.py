"""Train -> export -> delete the run and its data cache -> predict (slow): the label maps `gazejax.predict` writes for
the test cases equal, bit for bit, those the run's own test evaluation wrote; `--mode=evaluate --model` reproduces
the run's test metrics from the export alone."""
from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from gazejax import export, methods, predict
from tests.conftest import tiny_brats_config

pytestmark = pytest.mark.slow


def test_export_then_predict_matches_trainings_evaluation_after_the_run_is_deleted(tiny_brats_root, tmp_path,
                                                                                     fast_compile, capsys):
    from gazejax.engine import trainer as train

    cfg = tiny_brats_config(tiny_brats_root, str(tmp_path / "cache"), epochs=2, **{"eval.save_predictions": True})
    run = str(tmp_path / "run")
    train.train_and_evaluate(cfg, run, methods.get(cfg.method_family))
    test_cases = sorted(json.loads((tmp_path / "run" / "cases.json").read_text())["test"])
    saved = {c: np.asarray(nib.load(os.path.join(run, "predictions", f"{c}.nii.gz")).dataobj) for c in test_cases}
    results = json.loads((tmp_path / "run" / "results.json").read_text())

    export.FLAGS.unparse_flags()
    export.FLAGS(["export", f"--workdir={run}", f"--out={tmp_path / 'model'}"])
    assert export.main([]) == 0
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["stage"] == "train" and meta["kind"] == "volume" and meta["labels"] == ["ET", "TC", "WT"]
    assert "dice_WT" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    shutil.rmtree(run)
    shutil.rmtree(tmp_path / "cache")

    inputs = [os.path.join(tiny_brats_root, c) for c in test_cases]
    out = tmp_path / "pred"
    for case in inputs:
        result = predict.predict([str(tmp_path / "model")], case, str(out), labels=tiny_brats_root)
        assert result["done"] == 1 and not result["failures"].items
    for c in test_cases:
        got = np.asarray(nib.load(str(out / f"{c}.nii.gz")).dataobj)
        assert got.dtype == saved[c].dtype and np.array_equal(got, saved[c]), c
        assert os.path.exists(out / f"{c}_gaze.nii.gz")

    evaluated = train.evaluate_only(cfg, str(tmp_path / "again"), methods.get(cfg.method_family),
                                    model=str(tmp_path / "model"))
    for key in ("dice_ET", "dice_TC", "dice_WT", "hd95_WT"):
        assert evaluated["test"]["metrics"][key] == pytest.approx(results["test"][key], rel=1e-6), key
