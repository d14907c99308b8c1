"""Stage plumbing of the one trainer on a toy least-squares method: each stage reads its own training set, starts
from the stage `init_from` names (or a fresh initialisation), receives itself in `loss_fn` / `evaluate`, and
stages flagged `evaluate=True` are scored on test with their own best checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os

import grain
import numpy as np
import pytest

from gazejax.engine import trainer as train
from gazejax.engine.api import DataBundle, Method, Stage
from tests.engine import toy
from tests.engine.toy import DIM, PROBE


def _make_method(seen: dict) -> Method:
    def loss_fn(outputs, batch, params, config, stage=None):
        seen.setdefault("loss_stages", set()).add(stage.name)
        err = outputs["y"] - batch["y"] * stage.options.get("target_scale", 1.0)
        return (err ** 2).mean(), {}

    def evaluate(predict, split, config, out_dir=None, stage=None):
        seen.setdefault("eval_stages", []).append(stage.name)
        weights = predict(PROBE)["y"]
        return {"metrics": {"neg_dist": -float(np.abs(weights - split).sum())}, "weights": weights}

    def make_data(config, process_index=0, process_count=1):
        full, small = toy.examples(64, seed=64), toy.examples(16, seed=16)
        return DataBundle(train=grain.MapDataset.source(full), num_train=len(full),
                          splits={"val": toy.TARGET, "test": toy.TARGET},
                          train_sets={"small": grain.MapDataset.source(small)})

    def stages(config):
        return [Stage("a", epochs=4, monitor="val/neg_dist", evaluate=True),
                Stage("fresh", epochs=1, train_set="small", init_from="init", optimizer={"lr": 0.0}, evaluate=True),
                Stage("from_a", epochs=1, init_from="a", optimizer={"lr": 0.0}, evaluate=True,
                      options={"target_scale": 2.0})]

    return dataclasses.replace(toy.make_method(), loss_fn=loss_fn, make_data=make_data, evaluate=evaluate,
                               report=lambda r, c, w: "", stages=stages)


def _config():
    return toy.config(**{"optim.lr": 0.1})


def test_stages_choose_data_start_point_and_are_evaluated(tmp_path, monkeypatch):
    seen: dict = {}
    method = _make_method(seen)
    results = train.train_and_evaluate(_config(), str(tmp_path), method)

    assert seen["loss_stages"] == {"a", "fresh", "from_a"}  # loss_fn traced once per stage with its Stage
    assert set(results["stages"]) == {"a", "fresh", "from_a"}
    w_a = results["stages"]["a"]["weights"]
    w_fresh = results["stages"]["fresh"]["weights"]
    w_from_a = results["stages"]["from_a"]["weights"]
    target = np.arange(1, DIM + 1)
    # stage "a" learned something; "from_a" (lr 0) holds a's best exactly; "fresh" (lr 0) holds the initial weights
    assert np.abs(w_a - target).sum() < np.abs(w_fresh - target).sum()
    np.testing.assert_array_equal(w_from_a, w_a)
    assert not np.allclose(w_fresh, w_a)

    # "fresh" trained on the 16-example set: 16 // 8 = 2 steps; "a" 4 epochs x 64 // 8 = 32; "from_a" 8
    steps = [json.loads(line)["step"] for line in open(os.path.join(tmp_path, "metrics.jsonl"))
             if "train/loss" in line]
    assert max(steps) == 32 + 2 + 8
    summary = json.load(open(os.path.join(tmp_path, "results.json")))
    assert set(summary) == {"val", "test", "test@a", "test@fresh", "test@from_a"}


def test_init_from_must_name_an_earlier_stage(tmp_path, monkeypatch):
    method = _make_method({})
    bad = lambda config: [Stage("a", epochs=1), Stage("b", epochs=1, init_from="later"), Stage("later", epochs=1)]
    with pytest.raises(ValueError, match="init_from='later' names no earlier stage"):
        train.train_and_evaluate(_config(), str(tmp_path), Method(**{**method.__dict__, "stages": bad}))


def test_grad_accumulation_equals_the_full_batch(tmp_path, monkeypatch):
    """k micro-batches of a per-example-mean loss give the full batch's gradient, hence the same weights."""
    method = _make_method({})
    one = lambda config: [Stage("a", epochs=2, evaluate=True)]
    method = Method(**{**method.__dict__, "stages": one})
    weights = {}
    for k in (1, 4):
        cfg = _config()
        cfg.grad_accum_steps = k
        weights[k] = train.train_and_evaluate(cfg, str(tmp_path / f"k{k}"), method)["stages"]["a"]["weights"]
    assert not np.allclose(weights[1], 0.0)
    np.testing.assert_allclose(weights[4], weights[1], rtol=1e-5, atol=1e-6)
    cfg = _config()
    cfg.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps=3 must divide the per-device batch 8"):
        train.train_and_evaluate(cfg, str(tmp_path / "k3"), method)
