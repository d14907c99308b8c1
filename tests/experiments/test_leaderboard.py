"""The cross-method leaderboard: uniform scores from hand-made evaluations (fast), and a tiny two-row grid through
the runner, export and the Inference hooks (slow)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from gazejax.experiments import leaderboard, runner

NAMES = ("Normal", "CHF", "pneumonia")


def _evaluation(seed: int, n: int = 30, grid=(4, 4), good: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + (2.0 if good else 0.0) * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = [rng.random(grid) if i % 5 else None for i in range(n)]
    fix = [None if t is None else t > 0.7 for t in truth]
    organs = [None if y == 0 else (np.arange(16).reshape(grid) < 8).astype(float) for y in labels]
    maps = np.stack([t if t is not None else np.zeros(grid) for t in truth]) if good else rng.random((n, *grid))
    return {"labels": labels.tolist(), "probs": probs.tolist(), "map": maps.tolist(), "params": 100.0 if good else 50.0,
            "train_seconds": 10.0, "truth": [None if t is None else t.tolist() for t in truth],
            "fixations": [None if f is None else f.tolist() for f in fix],
            "organs": [None if o is None else o.tolist() for o in organs]}


def test_row_summary_scores_auroc_ci_gaze_agreement_and_pointing():
    evals = [_evaluation(s) for s in (0, 1)]
    maps = [np.asarray(e["map"]) for e in evals]
    row = leaderboard.row_summary(evals, NAMES, maps, {"bootstrap": 200})
    per_seed = [roc_auc_score(e["labels"], e["probs"], multi_class="ovr") for e in evals]
    assert row["auroc"] == pytest.approx(np.mean(per_seed)) and row["seeds"] == 2
    assert row["auroc_ci"][0] <= roc_auc_score(evals[0]["labels"], np.mean([e["probs"] for e in evals], 0),
                                               multi_class="ovr") <= row["auroc_ci"][1]
    # per-class CIs: the same seeded resamples scored by sklearn's binary AUROC of each class against the rest
    labels, probs = np.asarray(evals[0]["labels"]), np.mean([e["probs"] for e in evals], 0)
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(labels), size=len(labels)) for _ in range(200)]
    for k, name in enumerate(NAMES):
        boot = [roc_auc_score(labels[i] == k, probs[i, k]) for i in draws if len(set(labels[i] == k)) == 2]
        assert row[f"auroc_{name}_ci"] == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    assert row["cc"] == pytest.approx(1.0) and row["sim"] == pytest.approx(1.0)  # maps equal the readers' maps
    truth = evals[0]["truth"]
    hits = [[float(np.asarray(o).flat[np.argmax(np.asarray(t))] >= 0.5) if t is not None and o is not None
             else np.nan for t, o in zip(e["truth"], e["organs"])] for e in evals]
    per_image = np.nanmean(hits, axis=0)  # mean over seeds per image, then over images
    assert row["pointing"] == pytest.approx(np.nanmean(per_image))
    control = leaderboard.row_summary(evals, NAMES, [leaderboard.control_maps("random", e, i)
                                                     for i, e in enumerate(evals)], {"bootstrap": 50})
    assert control["cc"] < 0.5 and control["auroc"] == pytest.approx(row["auroc"])
    tests = leaderboard.paired(control, row)
    assert "n=2 seeds" in tests["auroc"] and f"n={sum(t is not None for t in truth)} images" in tests["cc"]
    # same probabilities: no AUROC difference (before, the seed t-test printed "t=nan, p=nan")
    assert tests["auroc"] == "identical values (n=2 seeds)" and tests["auroc_boot"].startswith("+0.000 [+0.000, +0.000], p=1 ")


def test_auroc_bootstrap_test_detects_a_better_row_and_is_antisymmetric():
    good = leaderboard.row_summary([_evaluation(0, n=90)], NAMES, [None], {"bootstrap": 20})
    bad = leaderboard.row_summary([_evaluation(0, n=90, good=False)], NAMES, [None], {"bootstrap": 20})
    ab, ba = leaderboard.paired(good, bad, 300)["auroc_boot"], leaderboard.paired(bad, good, 300)["auroc_boot"]
    diff = roc_auc_score(good["labels"], good["mean_probs"], multi_class="ovr") - roc_auc_score(
        bad["labels"], bad["mean_probs"], multi_class="ovr")
    assert ab.startswith(f"{diff:+.3f} ") and ba.startswith(f"{-diff:+.3f} ") and diff > 0.2
    assert ", p<0.0033 (n=90 images)" in ab  # no resample of 300 reverses the order


def test_probe_auroc_of_self_supervised_cells(tmp_path):
    ssl, supervised = tmp_path / "ssl", tmp_path / "plain"
    for cell, results in ((ssl, {"test@pretrain": {"probe_auroc": 0.6}, "test": {"auroc": 0.7}}),
                          (supervised, {"test": {"auroc": 0.8}})):
        cell.mkdir()
        (cell / "results.json").write_text(json.dumps(results))
    assert leaderboard.probe_auroc(str(ssl)) == 0.6 and leaderboard.probe_auroc(str(supervised)) is None
    assert leaderboard.probe_auroc(str(tmp_path / "missing")) is None
    evals = [{**_evaluation(s), "probe_auroc": p} for s, p in ((0, 0.6), (1, 0.7))]
    row = leaderboard.row_summary(evals, NAMES, [None, None], {"bootstrap": 10})
    assert row["probe_auroc"] == pytest.approx(0.65)
    plain = leaderboard.row_summary([_evaluation(0)], NAMES, [None], {"bootstrap": 10})
    md = leaderboard.write(str(tmp_path), {"plain": plain, "ssl": row}, NAMES, {"reference": "plain"})
    assert "probe AUROC" in md and "| 0.650 |" in md and np.isnan(plain["probe_auroc"])


def test_pretrain_loss_is_the_mean_of_the_last_logged_contrastive_losses(tmp_path):
    ssl, supervised = tmp_path / "ssl", tmp_path / "plain"
    ssl.mkdir(), supervised.mkdir()
    records = [{"step": s, "train/loss_contrast": v} for s, v in zip(range(10, 80, 10), (4.2, 4.1, 4.0, 3.9, 3.8,
                                                                                          3.7, 3.6))]
    records += [{"step": 75, "val/probe_auroc": 0.6}, {"step": 80, "train/loss_ce": 1.0}]  # then fine-tuning
    (ssl / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (supervised / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.0}) + "\n")
    assert leaderboard.pretrain_loss(str(ssl)) == pytest.approx((4.0 + 3.9 + 3.8 + 3.7 + 3.6) / 5)
    assert leaderboard.pretrain_loss(str(ssl), last=2) == pytest.approx(3.65)
    assert leaderboard.pretrain_loss(str(supervised)) is None and leaderboard.pretrain_loss(str(tmp_path)) is None
    with open(ssl / "metrics.jsonl", "a") as f:  # a line cut by a kill, then the resumed run's rows
        f.write('{"step": 80, "train/loss_con\n' + json.dumps({"step": 80, "train/loss_contrast": 3.5}) + "\n")
    assert leaderboard.pretrain_loss(str(ssl), last=2) == pytest.approx(3.55)  # the cut line skipped, not fatal
    evals = [{**_evaluation(s), "pretrain_loss": v, "pretrain_chance": np.log(63)} for s, v in ((0, 3.8), (1, 3.9))]
    row = leaderboard.row_summary(evals, NAMES, [None, None], {"bootstrap": 10})
    plain = leaderboard.row_summary([_evaluation(0)], NAMES, [None], {"bootstrap": 10})
    md = leaderboard.write(str(tmp_path), {"plain": plain, "ssl": row}, NAMES, {"reference": "plain"})
    assert "| 3.850 (4.143) |" in md and "pretrain loss (chance)" in md


def test_write_gives_csv_markdown_and_figure(tmp_path):
    rows = {"plain": leaderboard.row_summary([_evaluation(0)], NAMES, [np.asarray(_evaluation(0)["map"])], {}),
            "other": leaderboard.row_summary([_evaluation(1, good=False)], NAMES,
                                             [np.asarray(_evaluation(1, good=False)["map"])], {})}
    md = leaderboard.write(str(tmp_path), rows, NAMES, {"title": "LB", "reference": "plain"})
    assert md.startswith("# LB") and "| other |" in md and "Paired tests against `plain`" in md
    with open(tmp_path / "leaderboard.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == ["plain", "other"] and float(table[0]["params"]) == 100.0
    for name in ("", *(f"_{n}" for n in NAMES)):  # every AUROC with its CI bounds, as in the rows
        assert float(table[1][f"auroc{name}_ci_low"]) == pytest.approx(rows["other"][f"auroc{name}_ci"][0])
        assert float(table[1][f"auroc{name}_ci_high"]) == pytest.approx(rows["other"][f"auroc{name}_ci"][1])
    ci = rows["other"][f"auroc_{NAMES[0]}_ci"]
    assert f"{rows['other'][f'auroc_{NAMES[0]}']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" in md
    assert os.path.getsize(tmp_path / "leaderboard.png") > 0


GRID = '''
import ml_collections

TINY = {"data.image_size": (64, 64), "data.gaze_grids": {"cam": (2, 2)}, "data.synthetic.images": 24,
        "data.synthetic.size": (64, 64), "data.synthetic.seed": 1, "model.resnet_width": 4, "batch_size": 4,
        "epochs": 1, "eval.batch": 8, "checkpoint.async_save": False, "data.num_threads": 1}

def get_config(arg=None):
    return ml_collections.ConfigDict({"unused": 0})

def get_grid(name, quick=False):
    cells = [{"row": row, "config": f"configs/ggcam.py:method={m},backbone=resnet18", "seed": s, **TINY,
              "data.synthetic.dir": DIR, "data.cache_dir": DIR + "/cache"}
             for row, m in (("plain", "plain"), ("ggcam", "ggcam")) for s in (0, 1)]
    return {"cells": cells, "tables": [], "leaderboard": {"title": "tiny", "reference": "plain", "bootstrap": 100,
            "controls": {"random_map": ("random", "plain")}, "stride": 16, "classes": ("Normal", "CHF", "pneumonia")}}
'''


@pytest.mark.slow
def test_tiny_cross_method_grid_trains_exports_and_scores_every_row(tmp_path, fast_compile):
    path = tmp_path / "grid.py"
    path.write_text(f"DIR = {str(tmp_path)!r}\n" + GRID)
    out = runner.run(str(path), None, "leaderboard", str(tmp_path / "lb"))
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    for row in ("plain", "ggcam", "random_map"):
        assert f"| {row} | 2 |" in md
    with open(tmp_path / "lb" / "leaderboard.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    cell = tmp_path / "lb" / "cells" / "ggcam-s0"
    ev = json.loads((cell / "leaderboard_eval.json").read_text())
    assert os.path.exists(cell / "model" / "model.json") and len(ev["probs"]) == len(ev["labels"])
    assert float(rows["random_map"]["auroc"]) == pytest.approx(float(rows["plain"]["auroc"]))
    assert float(rows["ggcam"]["params"]) > float(rows["plain"]["params"])  # the CAM layer and learned weights
    assert "leaderboard" in out["markdown"] or "tiny" in out["markdown"]


def test_data_config_replaces_typed_gaze_fields_of_any_config():
    """GazAT's config holds gaze_sigma="dataset" (a str field) and an augment ConfigDict: the leaderboard's data
    copy replaces them whatever their type (was a TypeError after the whole quick grid had trained)."""
    import ml_collections

    config = ml_collections.ConfigDict({"data": {"gaze_sigma": "dataset", "augment": {"enabled": True},
                                                 "gaze_grids": {"cam": (2, 2)}, "split": "70/10/20"}})
    out = leaderboard._data_config(config)
    assert out.data.gaze_sigma == 1.0 and out.data.augment is None and dict(out.data.gaze_grids) == {}
    assert out.data.ratio == 1.0 and out.data.split == "70/10/20" and config.data.gaze_sigma == "dataset"
