"""SAN + AAB chest X-ray method (Huang et al. Table 4): config and grid, losses on the right gaze grid, the gaze
grid check, AUROC against scikit-learn, the "best N epochs" averages from a hand-made metrics.jsonl, evaluation
with a stand-in predictor, and a tiny end-to-end run that writes report.md."""
from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import cxr_san as cxr_config
from gazejax.methods.cxr_san import inference as cxr_san_inference
from gazejax.methods.cxr_san import spec as cxr_san, report as cxr_san_report

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _bce(logits, targets):
    p = _sigmoid(logits)
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


# ---------------------------------------------------------------------------------------------------- config
def test_config_arguments_presets_and_grids():
    c = cxr_config.get_config("preset=paper,method=gaze_loss,backbone=mobilenet_v2,ratio=0.3,seed=2")
    assert (c.preset, c.method, c.model.backbone, c.data.ratio, c.seed) == ("paper", "gaze_loss", "mobilenet_v2",
                                                                             0.3, 2)
    assert c.method_family == "cxr_san" and c.data.label_set == "5label" and c.track_test and c.best_n == 30
    assert dict(c.data.gaze_grids) == {"san": (14, 14), "e4": (7, 7)}  # 224 / 16 and 224 / 32
    assert cxr_config.get_config("dataset=reflacx").data.gaze_sigma == "dataset"
    demo = cxr_config.get_config("")
    h, w = demo.data.image_size
    assert demo.method == "ours" and h % 32 == 0 and w % 32 == 0 and demo.best_n < 30
    assert dict(demo.data.gaze_grids) == {"san": (h // 16, w // 16), "e4": (h // 32, w // 32)}
    for bad in ("method=gaze", "backbone=vit_b_16", "dataset=chexpert", "preset=huge", "lr=1"):
        with pytest.raises(ValueError):
            cxr_config.get_config(bad)


@pytest.mark.parametrize("method", ["backbone", "backbone_matched", "gaze_star", "gaze_loss", "ours"])
def test_every_method_builds_with_its_gaze_grid(method):
    c = cxr_config.get_config(f"method={method}")
    model, x = cxr_san.build_model(c), cxr_san.init_batch(c)["image"]
    out = jax.eval_shape(lambda v: model.init_with_output(jax.random.key(0), v)[0], x)
    assert out["logits"].shape == (1, 5)
    key = cxr_san.gaze_target_key(method)
    if method == "backbone_matched":  # ours' network (SAN's gaze logits exist) trained without a gaze target
        assert key is None and out["gaze"] is not None
    elif key is None:
        assert out["gaze"] is None
    else:
        assert out["gaze"].shape == (1, *c.data.gaze_grids[key[len("gaze_"):]], 1)


def test_remat_reaches_the_backbone():
    c = cxr_config.get_config("method=ours")
    c.remat = True
    assert cxr_san.build_model(c).backbone_kwargs["remat"] is True
    c.model.backbone = "mobilenet_v2"
    with pytest.raises(ValueError, match="remat"):
        cxr_san.build_model(c)


def test_table4_grid_and_its_tables(tmp_path):
    from gazejax.experiments import runner as experiments, tables as experiments_tables

    grid = cxr_config.get_grid("table4")
    assert len(grid["cells"]) == 5 * 4 * 5  # Table 4's 4 methods + the param-matched backbone
    params = {"backbone": 4.0e6, "backbone_matched": 4.75e6, "ours": 4.75e6, "gaze_star": 4.01e6, "gaze_loss": 4.01e6}
    assert {c["data.ratio"] for c in grid["cells"]} == {0.2, 0.3, 0.5, 0.7}
    values = {}
    for cell in grid["cells"]:
        auroc = 0.6 + 0.1 * (cell["method"] == "ours") + 0.01 * cell["seed"]
        values.setdefault((cell["method"], cell["data.ratio"]), []).append(auroc)
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        metrics = {"auroc": auroc, "auroc_best_val_n": auroc, "auroc_best_test_n": auroc + 0.05,
                   "params_total": params[cell["method"]], **{f"auroc_{f}_best_val_n": auroc for f in FINDINGS}}
        (folder / "results.json").write_text(json.dumps({"test": metrics}))
    md = experiments_tables.aggregate(str(tmp_path), grid["cells"], grid, experiments.cell_name)["markdown"]
    mean, std = np.mean(values["ours", 0.2]), np.std(values["ours", 0.2], ddof=1)
    assert f"| ours | {100 * mean:.2f} ({std:.3f}) |" in md  # a method x ratio row, in %
    assert f"| 0.3 +gaze loss | {100 * np.mean(values['gaze_loss', 0.3]):.2f}" in md  # Table 4's layout
    assert "| Backbone, param-matched | 4.750 (0.000) |" in md and "| Backbone | 4.000 (0.000) |" in md
    with pytest.raises(ValueError):
        cxr_config.get_grid("table1")


# ---------------------------------------------------------------------------------------------------- losses
def _batch(seed=0, b=3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((b, 5)) < 0.5).astype(np.float32)
    mask = np.ones((b, 5), bool)
    mask[0, 1] = False  # an unknown label, left out of the BCE
    return {"label": labels, "label_mask": mask, "has_gaze": np.array([True, False, True][:b]),
            "gaze_san": rng.random((b, 4, 4, 1)).astype(np.float32),
            "gaze_e4": rng.random((b, 2, 2, 1)).astype(np.float32)}


def _outputs(method, seed=1, b=3):
    rng = np.random.default_rng(seed)
    grid = {"ours": (4, 4), "gaze_star": (2, 2), "gaze_loss": (2, 2)}.get(method)
    return {"logits": rng.normal(size=(b, 5)).astype(np.float32),
            "gaze": None if grid is None else rng.normal(size=(b, *grid, 1)).astype(np.float32)}


def _loss(method, batch, outputs):
    return float(cxr_san.loss_fn(outputs, batch, None, cxr_config.get_config(f"method={method}"))[0])


def _gaze_by_hand(method, batch, outputs) -> float:
    target = batch["gaze_san" if method == "ours" else "gaze_e4"]
    per = []
    for i in np.flatnonzero(batch["has_gaze"]):
        g, t = outputs["gaze"][i].ravel(), target[i].ravel()
        if method == "gaze_loss":  # KL(Q || softmax(g)), MIT form
            p, q = np.exp(g) / np.exp(g).sum(), t / t.sum()
            per.append(np.sum(q * np.log(2.220446049250313e-16 + q / (p + 2.220446049250313e-16))))
        else:  # Eq. 4
            per.append(np.mean(_bce(g, t)))
    return float(np.mean(per))


@pytest.mark.parametrize("method", ["ours", "gaze_star", "gaze_loss"])
def test_gaze_loss_uses_the_method_grid_and_target(method):
    batch, outputs = _batch(), _outputs(method)
    bce = float(np.mean(_bce(outputs["logits"], batch["label"])[batch["label_mask"]]))
    expected = bce + 0.5 * _gaze_by_hand(method, batch, outputs)  # w1 = 1, w2 = 0.5
    np.testing.assert_allclose(_loss(method, batch, outputs), expected, rtol=1e-5)
    own, other = ("gaze_san", "gaze_e4") if method == "ours" else ("gaze_e4", "gaze_san")
    changed = dict(batch, **{own: batch[own][[2, 1, 0]]})  # another image's gaze: the loss must move
    assert abs(_loss(method, changed, outputs) - expected) > 1e-4
    untouched = dict(batch, **{other: np.zeros_like(batch[other])})  # the other grid is never read
    np.testing.assert_allclose(_loss(method, untouched, outputs), expected, rtol=1e-6)
    no_gaze = dict(batch, has_gaze=np.zeros(3, bool))
    np.testing.assert_allclose(_loss(method, no_gaze, outputs), bce, rtol=1e-5)


def test_backbone_loss_is_masked_bce_and_ignores_gaze():
    batch, outputs = _batch(), _outputs("backbone")
    loss = _loss("backbone", batch, outputs)
    np.testing.assert_allclose(loss, np.mean(_bce(outputs["logits"], batch["label"])[batch["label_mask"]]),
                               rtol=1e-5)
    shuffled = dict(batch, gaze_san=batch["gaze_san"][::-1], gaze_e4=batch["gaze_e4"] * 0 + 1,
                    has_gaze=~batch["has_gaze"])
    assert _loss("backbone", shuffled, outputs) == loss


def test_gaze_grid_must_match_the_method_stride():
    c = cxr_config.get_config("method=ours")
    cxr_san.check_gaze_grid(c)
    c.data.gaze_grids = {"san": tuple(c.data.gaze_grids["e4"]), "e4": tuple(c.data.gaze_grids["e4"])}
    with pytest.raises(ValueError, match=r"gaze_grids\['san'\] must be image_size / 16"):
        cxr_san.make_data(c)  # refused before any data is read
    c.method = "gaze_star"  # the e4 grid is right for the stride-32 methods
    cxr_san.check_gaze_grid(c)
    c.data.gaze_grids = {"san": (10, 8)}
    with pytest.raises(ValueError, match=r"gaze_grids\['e4'\]"):
        cxr_san.check_gaze_grid(c)
    c.method, c.data.image_size = "ours", (160, 120)
    with pytest.raises(ValueError, match="multiples of 32"):
        cxr_san.check_gaze_grid(c)
    c.method = "backbone"  # no gaze output, no grid needed
    cxr_san.check_gaze_grid(c)


def test_synthetic_gaze_sigma_is_scaled_to_the_image():
    c = cxr_config.get_config("")
    assert cxr_san.gaze_sigma(c) == pytest.approx(150.0 * c.data.synthetic.size[0] / 3056)
    c.data.root = "/data/egd-cxr"
    assert cxr_san.gaze_sigma(c) == 150.0


# ---------------------------------------------------------------------------------------------------- metrics
def test_auroc_metrics_match_sklearn_on_known_labels():
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 5)) < 0.4).astype(np.float32)
    probs = np.clip(0.5 * targets + rng.random((30, 5)) * 0.7, 0, 1)
    known = np.ones((30, 5), bool)
    known[:6, 2] = False
    m = cxr_san.auroc_metrics(targets, probs, known)
    per = [roc_auc_score(targets[known[:, c], c], probs[known[:, c], c]) for c in range(5)]
    for f, a in zip(FINDINGS, per):
        np.testing.assert_allclose(m[f"auroc_{f}"], a, rtol=1e-12)
    np.testing.assert_allclose(m["auroc"], np.mean(per), rtol=1e-12)
    assert abs(m["auroc_Consolidation"] - roc_auc_score(targets[:, 2], probs[:, 2])) > 1e-6  # the mask matters
    targets[:, 0] = 0  # no positive Atelectasis: NaN and left out of the mean
    m = cxr_san.auroc_metrics(targets, probs, known)
    assert np.isnan(m["auroc_Atelectasis"]) and m["auroc"] == pytest.approx(np.mean(per[1:]))


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_best_n_epochs_from_a_hand_made_metrics_file(tmp_path):
    def ev(step, val, test, edema):
        return [{"step": step, "val/auroc": val, "val/loss": 0.3},
                {"step": step, "test/auroc": test, "test/auroc_Edema": edema}]
    rows = [{"step": 1, "train/loss": 1.0}]
    rows += ev(10, 0.60, 0.70, 0.1) + ev(20, 0.80, 0.65, 0.2) + ev(30, 0.70, 0.90, 0.3)
    rows += ev(40, 0.75, 0.50, 0.4)
    rows += ev(40, 0.65, 0.55, 0.5) + ev(50, "nan", 0.95, 0.6)  # resumed at 30: step 40 logged again, last wins
    rows += [{"step": 60, "val/auroc": 0.99}]  # a validation without test scores is not an evaluation here
    _write_jsonl(tmp_path / "metrics.jsonl", rows)
    evals = cxr_san_report.tracked_evaluations(str(tmp_path))
    assert [e["step"] for e in evals] == [10, 20, 30, 40, 50]
    assert evals[3]["val/auroc"] == 0.65 and evals[3]["test/auroc"] == 0.55 and np.isnan(evals[4]["val/auroc"])
    s = cxr_san_report.best_n_summary(evals, 2)
    assert s["steps_best_val_n"] == [20, 30] and s["steps_best_test_n"] == [50, 30]
    np.testing.assert_allclose(s["best_val_n"]["auroc"], (0.65 + 0.90) / 2)  # honest: ranked by validation
    np.testing.assert_allclose(s["best_test_n"]["auroc"], (0.95 + 0.90) / 2)  # literal: ranked by test
    np.testing.assert_allclose(s["best_val_n"]["auroc_Edema"], (0.2 + 0.3) / 2)  # same evaluations per finding
    assert np.isnan(s["best_val_n"]["auroc_Atelectasis"])  # never logged
    everything = cxr_san_report.best_n_summary(evals, 30)  # fewer evaluations than N: all of them
    assert everything["used"] == 5 and everything["best_val_n"]["auroc"] == pytest.approx(np.mean(
        [0.70, 0.65, 0.90, 0.55, 0.95]))
    flat = cxr_san_report.summary_metrics(s)
    assert flat["auroc_best_val_n"] == s["best_val_n"]["auroc"] and "auroc_Edema_best_test_n" in flat


# ---------------------------------------------------------------------------------------------------- evaluation
class _Split:
    """An EvalSplit stand-in: indexable examples and records with a dicom_id."""

    def __init__(self, examples, records):
        self.examples, self.records = examples, records

    def __len__(self):
        return len(self.records)


def test_evaluate_with_a_stand_in_predictor(tmp_path):
    rng = np.random.default_rng(3)
    n = 7
    examples = [{"image": np.full((64, 64, 1), i, np.float32), "label": (rng.random(5) < 0.5).astype(np.float32),
                 "label_mask": np.ones(5, bool), "has_gaze": np.bool_(i != 1),
                 "gaze_san": rng.random((4, 4, 1)).astype(np.float32),
                 "gaze_e4": rng.random((2, 2, 1)).astype(np.float32)} for i in range(n)]
    for ex in examples[:2]:
        ex["label"][:] = [1, 1, 1, 1, 1]
    for ex in examples[2:4]:
        ex["label"][:] = 0  # every finding has both label values
    logits, gaze = rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    shapes = []

    def predict(images):
        shapes.append(images.shape[0])
        idx = images[:, 0, 0, 0].astype(int)
        return {"logits": logits[idx], "gaze": gaze[idx]}

    split = _Split(examples, [types.SimpleNamespace(dicom_id=f"d{i}") for i in range(n)])
    cfg = cxr_config.get_config("method=ours")
    cfg.eval.batch, cfg.eval.figure_images = 4, 2
    res = cxr_san.evaluate(predict, split, cfg, str(tmp_path / "pred"))
    assert shapes == [4, 4]  # the short last batch is padded: one compiled shape
    targets = np.stack([ex["label"] for ex in examples])
    m = res["metrics"]
    np.testing.assert_allclose(m["auroc"], np.mean([roc_auc_score(targets[:, c], logits[:, c]) for c in range(5)]))
    batch = {k: np.stack([ex[k] for ex in examples]) for k in ("label", "label_mask", "has_gaze", "gaze_san")}
    np.testing.assert_allclose(m["loss"], _loss("ours", batch, {"logits": logits, "gaze": gaze}), rtol=1e-5)
    from gazejax.metrics.saliency import cc

    ccs = [cc(_sigmoid(gaze[i, ..., 0]), examples[i]["gaze_san"][..., 0]) for i in range(n) if i != 1]
    np.testing.assert_allclose(m["gaze_cc"], np.mean(ccs), rtol=1e-6)
    assert [f["dicom_id"] for f in res["figures"]] == ["d0", "d2"]  # images with gaze only
    np.testing.assert_allclose(res["figures"][1]["pred"], _sigmoid(gaze[2, ..., 0]), rtol=1e-6)
    assert len((tmp_path / "pred" / "predictions.csv").read_text().splitlines()) == n + 1


def test_three_class_task_softmax_ce_and_one_vs_rest_auroc(tmp_path):
    """data.label_set="3class" (the cross-method leaderboard's task): 3 outputs, softmax cross-entropy over known
    labels, macro one-vs-rest AUROC of the softmax as scikit-learn computes it, a report with the class names."""
    rng = np.random.default_rng(5)
    n = 9
    labels = np.arange(n) % 3
    examples = [{"image": np.full((64, 64, 1), i, np.float32), "label": np.int32(labels[i]),
                 "label_mask": np.bool_(i != 4), "has_gaze": np.bool_(True),
                 "gaze_san": rng.random((4, 4, 1)).astype(np.float32)} for i in range(n)]
    logits = rng.normal(size=(n, 3)).astype(np.float32)
    gaze = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)

    def predict(images):
        idx = images[:, 0, 0, 0].astype(int)
        return {"logits": logits[idx], "gaze": gaze[idx]}

    cfg = cxr_config.get_config("method=ours")
    cfg.data.label_set = "3class"
    assert cxr_san.label_names(cfg) == ("Normal", "CHF", "pneumonia") and cxr_san.is_multiclass(cfg)
    assert jax.eval_shape(lambda: cxr_san.build_model(cfg).init(
        jax.random.key(0), np.zeros((1, 64, 64, 1), np.float32), train=False))["params"]["classifier"]["kernel"].shape[-1] == 3
    res = cxr_san.evaluate(predict, _Split(examples, [types.SimpleNamespace(dicom_id=f"d{i}") for i in range(n)]), cfg,
                           str(tmp_path / "pred"))
    m, known = res["metrics"], np.arange(n) != 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(m["auroc"], roc_auc_score(labels[known], probs[known], multi_class="ovr"), rtol=1e-9)
    np.testing.assert_allclose(m["auroc_CHF"], roc_auc_score(labels[known] == 1, probs[known, 1]), rtol=1e-9)
    log_p = np.log(probs[np.arange(n), labels])
    np.testing.assert_allclose(m["loss_ce"], -log_p[known].mean(), rtol=1e-5)  # the masked image left out
    assert "loss_bce" not in m and res["positives"]["CHF"] == (2, 8)  # image 4 (CHF) unknown
    header = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()[0]
    assert header == "dicom_id,label_Normal,label_CHF,label_pneumonia,p_Normal,p_CHF,p_pneumonia"
    hook = cxr_san_inference.INFERENCE
    assert hook.labels(cfg) == ("Normal", "CHF", "pneumonia") and not hook.multilabel(cfg)
    out = hook.run(predict, np.stack([ex["image"] for ex in examples]), cfg)
    np.testing.assert_allclose(out["probs"], probs, rtol=1e-6)
    assert cxr_san_report.keys(cxr_san.label_names(cfg)) == ("auroc", "auroc_Normal", "auroc_CHF", "auroc_pneumonia")


# ---------------------------------------------------------------------------------------------------- end to end
