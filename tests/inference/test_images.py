"""gazejax.predict on chest X-ray files with untrained tiny GG-CAM exports: predictions.csv equals the model applied to
training's own input, batching and ensembles, explanation maps, bad files skipped, --labels scored."""
from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import ggcam as ggcam_config
from gazejax import predict
from gazejax.data.cxr import files as cxr_files
from gazejax.data.cxr import pipeline
from gazejax.inference import common
from tests.inference.helpers import untrained_export


def _config(tmp):
    c = ggcam_config.get_config("preset=demo,backbone=resnet18,method=ggcam")
    c.data.image_size = (64, 64)
    c.data.gaze_grids = {"cam": (2, 2)}
    c.data.cache_dir = os.path.join(tmp, "cache")
    c.data.synthetic.update({"dir": tmp, "images": 12, "seed": 1, "size": (64, 64)})
    c.model.resnet_width = 4
    c.eval.batch = 4
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cxr_predict"))
    c = _config(tmp)
    cases, where, _ = pipeline.load_cases(c)  # generates the synthetic EGD-CXR set and training's image cache
    dicoms = os.path.join(where["mimic_root"], "files")
    models = [untrained_export(c, os.path.join(tmp, f"m{seed}"), seed=seed) for seed in (0, 1)]
    return {"config": c, "cases": cases, "dicoms": dicoms, "models": models}


def _read(path):
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _probs(rows, names):
    return {os.path.basename(k): np.array([float(r[f"p_{n}"]) for n in names]) for k, r in rows.items()}


def test_predictions_equal_the_model_on_trainings_own_input(setup, tmp_path, no_xla_opt):
    out = tmp_path / "out"
    result = predict.predict(setup["models"][:1], setup["dicoms"], str(out), maps=True)
    assert result["done"] == len(setup["cases"]) and not result["failures"].items
    names = list(result["names"])
    rows = _read(out / "predictions.csv")
    assert len(rows) == len(setup["cases"])
    model = common.load_models(setup["models"][:1])[0]
    images = np.stack([np.asarray(c.image()) for c in setup["cases"]])[..., None]  # training's cached inputs
    expect = model.method.inference.run(model.predict, images, model.config, model.stage)["probs"]
    got = _probs(rows, names)
    for case, p in zip(setup["cases"], expect):
        np.testing.assert_allclose(got[f"{case.dicom_id}.dcm"], p, atol=1e-6)  # float32, other batch
    for key, row in rows.items():
        p = np.array([float(row[f"p_{n}"]) for n in names])
        assert abs(p.sum() - 1) < 1e-6 and row["predicted"] == names[int(np.argmax(p))]
        stem = out / "maps" / key.replace(os.sep, "__").rsplit(".", 1)[0]
        assert np.load(f"{stem}.npy").shape == (2, 2)
        source = cxr_files.read_source(os.path.join(setup["dicoms"], key))
        with Image.open(f"{stem}.png") as png:  # the overlay is drawn on the original radiograph, not the input
            assert png.size[::-1] == source.shape


def test_batch_size_and_ensemble(setup, tmp_path, no_xla_opt):
    names = None
    runs = {}
    for name, models, batch in (("a", setup["models"][:1], 5), ("a12", setup["models"][:1], 12),
                                ("b", setup["models"][1:], None), ("ab", setup["models"], None)):
        result = predict.predict(models, setup["dicoms"], str(tmp_path / name), batch=batch)
        names = result["names"]
        runs[name] = _probs(_read(tmp_path / name / "predictions.csv"), names)
    for key in runs["a"]:
        np.testing.assert_allclose(runs["a"][key], runs["a12"][key], atol=1e-6)  # padding rows change nothing
        np.testing.assert_allclose(runs["ab"][key], (runs["a"][key] + runs["b"][key]) / 2, atol=1e-7)
    assert not np.allclose(runs["a"][key], runs["b"][key])


def test_corrupt_file_is_skipped_reported_and_finished_images_not_redone(setup, tmp_path, capsys, no_xla_opt):
    inputs = tmp_path / "in"
    shutil.copytree(setup["dicoms"], inputs)
    first = sorted(cxr_files.list_images(str(inputs)))[0]
    with open(first, "r+b") as f:
        f.truncate(200)
    from PIL import Image

    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)).save(inputs / "extra.png")
    out = tmp_path / "out"
    result = predict.predict(setup["models"][:1], str(inputs), str(out))
    assert result["done"] == len(setup["cases"]) and len(result["failures"].items) == 1
    assert any(first in line and line.startswith("gazejax.predict: skipped")
               for line in capsys.readouterr().err.splitlines())
    rows = _read(out / "predictions.csv")
    assert "extra.png" in rows and os.path.relpath(first, inputs) not in rows
    again = predict.predict(setup["models"][:1], str(inputs), str(out))
    assert again["done"] == 0 and again["skipped"] == len(setup["cases"])
    assert _read(out / "predictions.csv") == rows


def test_labels_give_auroc_with_bootstrap_intervals(setup, tmp_path, no_xla_opt):
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "out"
    labels = tmp_path / "labels.csv"
    names = ("Normal", "CHF", "pneumonia")
    with open(labels, "w") as f:
        f.write("file,label\n" + "".join(f"{c.dicom_id}.dcm,{names[int(c.label)]}\n" for c in setup["cases"]))
    result = predict.predict(setup["models"][:1], setup["dicoms"], str(out), labels=str(labels))
    rows = _read(out / "predictions.csv")
    probs = _probs(rows, names)
    y = np.array([int(c.label) for c in setup["cases"]])
    p = np.stack([probs[f"{c.dicom_id}.dcm"] for c in setup["cases"]])
    assert result["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    lo, hi = result["metrics"]["auroc_ci"]
    assert lo <= result["metrics"]["auroc"] <= hi
    summary = (out / "summary.md").read_text()
    assert "95 % CI" in summary and "auroc_CHF" in summary
    assert len(_read(out / "metrics.csv")) == len(setup["cases"])
    with open(labels, "w") as f:
        f.write("file,label\n" + f"{setup['cases'][0].dicom_id}.dcm,cancer\n")
    with pytest.raises(ValueError, match="label 'cancer' is not one of Normal, CHF, pneumonia"):
        predict.predict(setup["models"][:1], setup["dicoms"], str(out), labels=str(labels))
