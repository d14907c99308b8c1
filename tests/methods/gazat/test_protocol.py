"""GazAT's comparison protocol (configs/gazat.py + methods/gazat): one augmentation strength for every method of the
compare grid, the gaze losses on the un-blended view, label budgets (last checkpoints, several subset draws), the
pretraining learning-rate schedule, and McGIP's positive rate in the report."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gazat as gazat_config
from gazejax.data import views
from gazejax.experiments.runner import apply_overrides
from gazejax.methods.gazat import data as gazat_data, report as gazat_report, spec as gazat


def _example(size: int = 32) -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(0, 1, (size, size, 1)).astype(np.float32),
            "fixations": rng.uniform(4, size - 5, (5, 2)).astype(np.float32),
            "fixation_weights": np.ones(5, np.float32), "fixation_sigma": np.full((5, 2), 3.0, np.float32),
            "fixation_valid": np.ones(5, bool), "fixation_reader": np.zeros(5, np.int32),
            "reader_weights": np.ones(1, np.float32), "has_gaze": np.asarray(True),
            "label": np.zeros(5, np.float32), "label_mask": np.ones(5, bool), "index": np.int32(3)}


# ---------------------------------------------------------------------------------------- augmentation strength
def test_compare_grid_gives_every_method_the_strong_second_view_and_labels_the_weak_rows():
    base, grid = gazat_config.get_config(), gazat_config.get_grid("compare")
    assert base.views.baseline_strong  # a single baseline run gets the strength too
    rows, labels = grid["tables"][0]["row"], grid["tables"][0]["row_labels"]
    seen = {}
    for cell in grid["cells"]:
        c = apply_overrides(base, cell)
        key = tuple(cell.get(k) for k in rows)
        assert key in labels
        if c.method == "supervised":
            continue
        cfg = gazat.view_config(c)
        strong = cfg.mode == "gaze" or cfg.baseline_strong
        seen.setdefault(c.method, set()).add(strong)
        if not strong:
            assert "weak" in labels[key]  # weak-augmentation baselines only as extra, labelled rows
        a = views.make_views(_example(), np.random.default_rng(1), cfg)
        plain = views.make_views(_example(), np.random.default_rng(1), views.ViewConfig(
            mode="standard", standard=cfg.standard, strong=cfg.strong, baseline_strong=False))
        np.testing.assert_array_equal(a["view_a"], plain["view_a"])
        assert (np.abs(a["view_g"] - plain["view_g"]).max() > 1e-3) == strong, cell
        assert int(a["index"]) == 3
    assert all(True in s for s in seen.values()), seen  # every pretraining method has an equal-strength row


# ---------------------------------------------------------------------------------------- gaze shortcut
def _gaze_outputs(b: int = 3, h: int = 2, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = gazat_config.get_config()
    c.model.attention_layers, c.model.region_layer = ("layer3",), "layer3"
    att = np.zeros((b, h, h), np.float32)
    att[:, 0] = 0.9
    outputs = {"attention_a": {"layer3": jnp.asarray(rng.uniform(size=(b, h, h)), jnp.float32)},
               "attention_g": {"layer3": jnp.asarray(rng.uniform(size=(b, h, h)), jnp.float32)},
               "dense_a": jnp.asarray(rng.normal(size=(b, h, h, d)), jnp.float32),
               "dense_g": jnp.asarray(rng.normal(size=(b, h, h, d)), jnp.float32)}
    batch = {"has_gaze": jnp.ones(b, bool), "attn_a_layer3": jnp.asarray(att), "attn_g_layer3": jnp.asarray(att)}
    return c, outputs, batch


@pytest.mark.slow
@pytest.mark.parametrize("form,g_matters", [("unblended", False), ("both", True)])
def test_attention_transfer_and_regional_negatives_use_the_unblended_view(form, g_matters):
    c, outputs, batch = _gaze_outputs()
    c.loss.gaze_views = form
    base_loss, metrics = gazat.gaze_losses(outputs, batch, c)
    assert {"regional_high_cos", "regional_high_low_cos", "regional_pos_cos"} <= set(metrics)  # logged diagnostics
    moved = dict(outputs, attention_g={"layer3": outputs["attention_g"]["layer3"] * 0 + 5.0})
    moved["dense_g"] = outputs["dense_g"].at[:, 1].add(3.0)  # view g's low-gaze (strongly augmented) features
    other, _ = gazat.gaze_losses(moved, batch, c)
    assert (abs(float(other) - float(base_loss)) > 1e-4) == g_matters
    assert c.loss.regional_negatives == "low+high"  # demo; the paper preset keeps Sec. 2.3.3's low-only text
    assert gazat_config.get_config("preset=paper").loss.regional_negatives == "low"
    ablation = {cell["ablation"]: cell for cell in gazat_config.get_grid("ablation")["cells"]}
    assert ablation["blended_targets"]["loss.gaze_views"] == "both"  # the earlier form stays as an ablation row


# ---------------------------------------------------------------------------------------- label budget
def test_checkpoints_are_the_last_ones_and_each_fraction_has_three_subset_draws():
    for preset in ("demo", "paper"):
        c = gazat_config.get_config(f"preset={preset}")
        st = gazat.stages(c)
        assert st[0].monitor == "val/train_calls" and all(s.monitor == "val/train_calls" for s in st[1:])
        assert c.finetune.subset_draws >= 3
        names = [n for n, _, _ in gazat.label_subsets(c)]
        assert names == [f"{p}pct_d{k}" for p in (1, 10) for k in range(c.finetune.subset_draws)]
    assert gazat.stages(gazat_config.get_config("method=supervised"))[0].monitor == "val/auroc"
    grid = gazat_config.get_grid("compare")
    splits = {t["split"] for t in grid["tables"]}
    assert {f"test@finetune_{p}pct_d{k}" for p in (1, 10) for k in range(3)} <= splits


def test_subset_draws_differ_and_the_report_gives_their_mean_and_std():
    import types

    items = [types.SimpleNamespace(case=types.SimpleNamespace(label=np.int32(i % 3), patient_id=str(i)))
             for i in range(300)]
    draws = [{id(it) for it in gazat_data.label_subset(items, 0.1, seed=k, min_size=4)} for k in range(3)]
    assert all(len(d) == 30 for d in draws) and draws[0] != draws[1] != draws[2]
    stages = {"pretrain": {"probe_auroc": 0.8, "probe_c": 1.0},
              **{f"finetune_1pct_d{k}": {"auroc": v, "accuracy": 0.5, "f1": 0.4} for k, v in enumerate((.6, .7, .8))}}
    text = "\n".join(gazat_report._classification(stages))
    assert "| finetune_1pct | 3 | 0.700 (0.100) | 0.500 (0.000) | 0.400 (0.000) |" in text


@pytest.mark.slow
def test_model_counts_training_calls_for_the_last_checkpoint_monitor():
    from gazejax.models.ssl import SSLModel

    model = SSLModel(backbone="resnet18", backbone_kwargs={"in_channels": 1, "width": 2}, num_classes=3,
                     proj_hidden=8, proj_dim=4, attention_layers=("layer2",), region_layer="layer4")
    x = jnp.zeros((2, 32, 32, 1))
    v = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, x, train=False))()
    rest = [k for k in v if k != "params"]
    for _ in range(2):
        _, new = model.apply(v, x, x, train=True, mutable=rest)
        v = {"params": v["params"], **new}
    _, new = model.apply(v, x, train=True, mutable=rest)  # a fine-tuning call counts too
    v = {"params": v["params"], **new}
    assert int(model.apply(v, x, train=False)["train_calls"]) == 3


# ---------------------------------------------------------------------------------------- schedule, McGIP
def test_pretraining_learning_rate_warms_up_then_decays_by_a_cosine():
    from gazejax.engine import stage_rules

    paper = gazat_config.get_config("preset=paper")
    assert paper.pretrain_epochs == 200
    assert dict(gazat.stages(paper)[0].optimizer) == {"warmup_epochs": 10, "decay_start_epoch": 10}
    c = gazat_config.get_config()  # demo: 10 epochs, 1 of warm-up
    stage = gazat.stages(c)[0]
    params = {"online": {"w": jnp.zeros(3)}}  # a trained path
    tx = stage_rules.stage_tx(c, stage, 4, params)  # 10 epochs x 4 steps
    state, sizes = tx.init(params), []
    for _ in range(40):
        updates, state = tx.update({"online": {"w": jnp.ones(3)}}, state, params)  # Adam: |update| ~ lr here
        sizes.append(float(jnp.abs(updates["online"]["w"][0])))
    lr = float(c.optim.lr)
    np.testing.assert_allclose(sizes[:4], lr * np.arange(1, 5) / 4, rtol=1e-3)  # linear warm-up, 1 epoch
    assert sizes[4] == pytest.approx(lr, rel=1e-3)
    assert sizes[22] == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * 18 / 36)), rel=1e-3)
    assert sizes[-1] < 0.01 * lr


def test_mcgip_positive_rate_is_counted_over_pairs_and_printed(caplog):
    maps = np.array([[[3, 2, 1]], [[3, 2, 0]], [[1, 2, 3]], [[3, 2, 1]]], np.float32)  # bits 11, 11, 00, 11
    out = gazat_data.positive_rate(maps, np.array([True, True, True, False]), "dhash", 0.7)
    assert out == {"pairs": 3, "positive_rate": pytest.approx(1 / 3)}  # (0,1) of (0,1), (0,2), (1,2)
    info = {"mcgip": {"similarity": "dhash", "grid": (8, 9), "threshold": 0.7, "pairs": 3, "positive_rate": 1 / 3,
                      "extra_positives_per_gaze_anchor": 2.5}}
    line = gazat_report._mcgip({"data_info": info})[0]
    assert "33.33 % of the 3 training image pairs" in line and "8 x 9" in line
    import logging

    with caplog.at_level(logging.WARNING, logger="gazejax"):
        gazat_data.report_positive_rate(dict(info["mcgip"], positive_rate=0.88, pairs=39060), 32)
    assert "marks 88.0 % of the 39060 training image pairs positive" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gazejax"):
        gazat_data.report_positive_rate(info["mcgip"] | {"positive_rate": 0.02}, 32)
    assert "McGIP" not in caplog.text
    c = gazat_config.get_config("preset=paper,method=mcgip")
    assert (c.mcgip.similarity, tuple(c.mcgip.grid), c.mcgip.threshold) == ("dhash", (8, 9), 0.9)


def test_report_shows_the_last_logged_collapse_diagnostics(tmp_path):
    import json

    rows = [{"step": 10, "train/regional_high_cos": 0.5, "train/loss_regional": 3.0},
            {"step": 20, "val/probe_auroc": 0.7},
            {"step": 30, "train/regional_high_cos": 0.99, "train/regional_high_low_cos": -0.98,
             "train/regional_pos_cos": 0.995, "train/loss_regional": 3.466}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    line = gazat_report._collapse(str(tmp_path))[0]
    assert "step 30" in line and "high vs other images' high 0.990" in line and "high vs low -0.980" in line
    assert gazat_report._collapse(str(tmp_path / "missing")) == []


def test_comparison_table_averages_the_draws_and_labels_weak_view_rows(tmp_path):
    import json

    for name, strong, aurocs in (("a", True, (0.6, 0.8, 0.7)), ("b", False, (0.5, 0.5, 0.5))):
        wd = tmp_path / name
        wd.mkdir()
        res = {"test@pretrain": {"probe_auroc": 0.9}, **{f"test@finetune_1pct_d{k}": {"auroc": v}
                                                        for k, v in enumerate(aurocs)}}
        (wd / "results.json").write_text(json.dumps(res))
        (wd / "config.json").write_text(json.dumps({"method": "simclr", "views": {"baseline_strong": strong}}))
    table = gazat_report.comparison([str(tmp_path / "a"), str(tmp_path / "b")])
    assert "| SimCLR | 0.900 | n/a | 0.700 (0.100) | n/a |" in table
    assert "| SimCLR, two weak views | 0.900 | n/a | 0.500 (0.000) |" in table
