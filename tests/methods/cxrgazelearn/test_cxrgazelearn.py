"""CXRGazeLearn as a method (configs/cxrgazelearn.py + gazejax.methods.cxrgazelearn): config and stages, the
triplet loss against hand-computed and brute-force values (both minings), the KL / CE / MT-UNet losses against
gazejax.metrics.saliency and hand formulas, the evaluation against scikit-learn and the MIT metrics, the report's
sibling tables and t-tests against scipy, the tables12 grid, HS (the paper's histogram similarity) against hand
values, the whole DenseNet-201 in stage 1 (torchvision's parameter count), frozen parts in inference mode, the
from-scratch warning, and one tiny end-to-end run of all four stages: frozen parameters and BatchNorm statistics
stay bit-identical and every stage starts from the previous stage's best checkpoint."""
from __future__ import annotations

import dataclasses
import itertools
import json
import types

import jax
import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from configs import cxrgazelearn as cfg_lib
from gazejax import methods
from gazejax.engine import optim
from gazejax.methods.cxrgazelearn.losses import triplet_loss
from gazejax.methods.cxrgazelearn import spec as M
from gazejax.metrics import saliency as sal

SQ2 = np.sqrt(2.0)


# ---------------------------------------------------------------------------------------------------- config
def test_config_presets_and_errors():
    c = cfg_lib.get_config("preset=paper,method=mt_unet,seed=2")
    assert (c.method, c.seed, c.method_family, tuple(c.data.image_size)) == ("mt_unet", 2, "cxrgazelearn", (640, 512))
    assert c.optim.lr == 1e-4 and c.epochs == 50 and c.data.split == "983/100" and c.loss.triplet_margin == 1.0
    assert tuple(c.model.unet_widths) == (64, 128, 256, 512, 1024) and c.model.encoder_cut == "transition3"
    demo = cfg_lib.get_config("")
    assert tuple(demo.data.gaze_grids["saliency"]) == tuple(demo.data.image_size)
    for bad in ("method=ours", "preset=huge"):
        with pytest.raises(ValueError):
            cfg_lib.get_config(bad)


def _trainable_modules(config, stage) -> set[str]:
    model = M.build_model(config)
    x = M.init_batch(config)["image"]
    params = jax.eval_shape(lambda a: model.init(jax.random.key(0), a), x)["params"]
    keep = optim.path_filter(list(stage.trainable))
    flags = jax.tree_util.tree_map_with_path(lambda p, _: keep(optim.path_string(p)), params)
    return {top for top in params if any(jax.tree_util.tree_leaves(flags[top]))}


@pytest.mark.slow
def test_stages_train_the_papers_modules():
    c = cfg_lib.get_config("preset=paper")
    stages = M.stages(c)
    assert [s.name for s in stages] == ["stage1a", "stage1b", "stage2", "stage3"]
    demo = cfg_lib.get_config("")
    assert [_trainable_modules(demo, s) for s in stages] == [{"features"}, {"features", "dnet_head"},
                                                             {"res_se_unet"}, {"fusion"}]
    assert [(s.monitor, s.monitor_mode) for s in stages] == [("val/triplet", "min"), ("val/auroc", "max"),
                                                             ("val/kl", "min"), ("val/auroc", "max")]
    assert all(s.epochs == 50 and s.init_from is None and s.early_stop_patience == 10 for s in stages)
    assert [s.name for s in stages if s.evaluate] == ["stage1b", "stage2"]
    plans = {m: [s.name for s in M.stages(cfg_lib.get_config(f"method={m}"))] for m in cfg_lib.METHODS}
    assert plans == {"cxrgazelearn": ["stage1a", "stage1b", "stage2", "stage3"], "mt_unet": ["mt_unet"],
                     "dnet201_cl": ["stage1a", "stage1b"], "dnet201": ["stage1b"], "res_se_unet": ["stage2"],
                     "unet_s": ["stage2"]}
    dnet, unet_, fusion = ("features/*", "dnet_head/*"), ("res_se_unet/*",), ("fusion/*",)
    assert [s.frozen for s in stages] == [unet_ + fusion, unet_ + fusion, dnet + fusion, dnet + unet_]
    assert [M.apply_kwargs(s) for s in stages] == [{"inference": ("res_se_unet", "fusion")}] * 2 + [
        {"inference": ("densenet", "fusion")}, {"inference": ("densenet", "res_se_unet")}]
    for m in ("dnet201", "dnet201_cl", "mt_unet", "res_se_unet", "unet_s"):  # other models: nothing to freeze
        assert all(not s.frozen and M.apply_kwargs(s) == {} for s in M.stages(cfg_lib.get_config(f"method={m}")))
    unet = cfg_lib.get_config("method=unet_s")
    assert M.stages(unet)[0].trainable == ("*",) and _trainable_modules(unet, M.stages(unet)[0]) == {
        "enc1", "enc2", "enc3", "enc4", "enc5", "up1", "up2", "up3", "up4", "dec1", "dec2", "dec3", "dec4", "head"}


# ---------------------------------------------------------------------------------------------------- losses
def test_triplet_loss_hand_computed_case():
    # unit vectors at 0, 90, 180, 270 degrees (the first scaled by 3: normalised away), classes 0, 0, 1, 1 and one
    # invalid sample; d(0,1) = d(0,3) = d(1,2) = d(2,3) = sqrt 2, d(0,2) = d(1,3) = 2.
    e = np.array([[3, 0], [0, 1], [-1, 0], [0, -1], [0.9, 0.1]], np.float32)
    labels, valid = np.array([0, 0, 1, 1, 1]), np.array([True, True, True, True, False])
    loss, n = triplet_loss(e, labels, valid, margin=1.0, mining="all")
    # 8 triplets: 4 with d(a,n) = 2 -> sqrt 2 - 1, 4 with d(a,n) = sqrt 2 -> 1
    assert float(n) == 8 and float(loss) == pytest.approx((4 * (SQ2 - 1) + 4) / 8, rel=1e-5)
    loss, n = triplet_loss(e, labels, valid, margin=1.0, mining="hard")  # hardest negative at sqrt 2 -> 1 each
    assert float(n) == 4 and float(loss) == pytest.approx(1.0, rel=1e-5)
    loss, n = triplet_loss(e, labels, valid, margin=0.3, mining="hard")
    assert float(loss) == pytest.approx(0.3, rel=1e-4)
    loss, n = triplet_loss(e[:2], labels[:2], valid[:2])  # no negative in the batch
    assert float(loss) == 0.0 and float(n) == 0


def test_triplet_loss_matches_brute_force():
    rng = np.random.default_rng(3)
    e, labels = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
    valid = rng.uniform(size=9) > 0.2
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    d = np.linalg.norm(u[:, None] - u[None], axis=-1)
    idx = [i for i in range(9) if valid[i]]
    terms, hard = [], []
    for a in idx:
        pos = [p for p in idx if p != a and labels[p] == labels[a]]
        neg = [n for n in idx if labels[n] != labels[a]]
        terms += [max(d[a, p] - d[a, n] + 1.0, 0.0) for p, n in itertools.product(pos, neg)]
        if pos and neg:
            hard.append(max(max(d[a, pos]) - min(d[a, neg]) + 1.0, 0.0))
    for mining, want in (("all", terms), ("hard", hard)):
        loss, n = triplet_loss(e.astype(np.float32), labels, valid, mining=mining)
        assert float(n) == len(want) and float(loss) == pytest.approx(np.mean(want), rel=1e-5)
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(e, labels, mining="semi")


def _stage(name):
    return next(s for s in M.stages(cfg_lib.get_config("")) if s.name == name)


def test_kl_loss_equals_mit_kl_div_and_skips_images_without_gaze():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 6, 1)).astype(np.float32)
    gaze = rng.uniform(size=(3, 8, 6, 1)).astype(np.float32)
    gaze /= gaze.sum(axis=(1, 2, 3), keepdims=True)
    batch = {M.GAZE_KEY: gaze, "has_gaze": np.array([True, False, True]), "label": np.zeros(3, np.int32),
             "label_mask": np.ones(3, bool)}
    loss, terms = M.loss_fn({"saliency": logits}, batch, None, cfg_lib.get_config(""), stage=_stage("stage2"))
    p = softmax(logits.reshape(3, -1).astype(np.float64), axis=1)
    want = np.mean([sal.kl_div(p[i], gaze[i].ravel()) for i in (0, 2)])
    assert float(loss) == pytest.approx(want, rel=1e-5) and float(terms["loss_kl"]) == float(loss)


def test_ce_and_mtunet_losses_by_hand():
    rng = np.random.default_rng(1)
    out = {"logits": rng.normal(size=(4, 3)).astype(np.float32), "saliency": np.zeros((4, 4, 4, 1), np.float32),
           "dnet_logits": np.zeros((4, 3), np.float32), "log_sigma_ce": np.float32(0.3),
           "log_sigma_kl": np.float32(-0.2)}
    gaze = rng.uniform(size=(4, 4, 4, 1)).astype(np.float32)
    batch = {"label": np.array([0, 2, 1, 1], np.int32), "label_mask": np.array([1, 1, 1, 0], bool),
             M.GAZE_KEY: gaze, "has_gaze": np.ones(4, bool)}
    c = cfg_lib.get_config("method=mt_unet")
    logp = out["logits"] - np.log(np.exp(out["logits"]).sum(1, keepdims=True))
    ce = -np.mean(logp[np.arange(3), batch["label"][:3]])  # the unknown label is left out
    loss, _ = M.loss_fn(out, batch, None, c, stage=_stage("stage3"))
    assert float(loss) == pytest.approx(ce, rel=1e-5)
    assert float(M.loss_fn(out, batch, None, c, stage=_stage("stage1b"))[0]) == pytest.approx(np.log(3), rel=1e-5)
    kl = np.mean([sal.kl_div(np.full(16, 1 / 16), gaze[i].ravel()) for i in range(4)])  # uniform prediction
    s_ce, s_kl = np.exp(0.3), np.exp(-0.2)
    want = ce / s_ce**2 + np.log(s_ce + 1) + kl / (2 * s_kl**2) + np.log(s_kl + 1)  # REFERENCE_NOTES MT-UNet
    loss, terms = M.loss_fn(out, batch, None, c, stage=M.stages(c)[0])
    assert float(loss) == pytest.approx(want, rel=1e-5) and float(terms["loss_kl"]) == pytest.approx(kl, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- evaluation
class _Split:
    def __init__(self, examples, records):
        self.examples, self.records = examples, records

    def __len__(self):
        return len(self.records)


def _fake_split(n=9, size=(8, 6)):
    rng = np.random.default_rng(5)
    examples, records = [], []
    for i in range(n):
        gaze = rng.uniform(size=(*size, 1)).astype(np.float32)
        examples.append({"image": np.full((*size, 1), i / 100, np.float32), "label": np.int32(i % 3),
                         "label_mask": np.bool_(True), "has_gaze": np.bool_(i != 4),
                         M.GAZE_KEY: gaze / gaze.sum()})
        records.append(types.SimpleNamespace(dicom_id=f"img{i}"))
    return _Split(examples, records)


def test_evaluate_matches_sklearn_and_mit_metrics(tmp_path):
    split = _fake_split()
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(9, 3)).astype(np.float32) + 2 * np.eye(3, dtype=np.float32)[np.arange(9) % 3]
    sal_logits = rng.normal(size=(9, 8, 6, 1)).astype(np.float32)

    def predict(images):
        i = np.rint(images[:, 0, 0, 0] * 100).astype(int)
        return {"logits": logits[i], "saliency": sal_logits[i], "gradcam": np.ones((len(i), 1, 1, 3), np.float32)}

    c = cfg_lib.get_config("")
    c.eval.batch = 4
    res = M.evaluate(predict, split, c, str(tmp_path / "pred"), stage=_stage("stage3"))
    m, labels = res["metrics"], np.arange(9) % 3
    probs = softmax(logits.astype(np.float64), axis=1)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), rel=1e-12)
    assert m["auroc_pneumonia"] == pytest.approx(roc_auc_score(labels == 2, probs[:, 2]), rel=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    p = softmax(sal_logits.reshape(9, -1).astype(np.float64), axis=1)
    for key, fn in (("kl", sal.kl_div), ("cc", sal.cc), ("hs", sal.hs), ("sim", sal.sim)):
        per = [fn(p[i], split.examples[i][M.GAZE_KEY].ravel()) for i in range(9) if i != 4]
        assert m[key] == pytest.approx(np.mean(per), rel=1e-9) and m[f"{key}_std"] == pytest.approx(
            np.std(per, ddof=1), rel=1e-9)
        assert [c_["scores"].get(key) for c_ in res["cases"] if c_["case_id"] != "img4"] == pytest.approx(per)
    assert "kl" not in res["cases"][4]["scores"] and m["loss"] == m["loss_ce"]
    assert set(res["figures"]) == {"Normal", "CHF", "pneumonia"}
    assert (tmp_path / "pred" / "predictions.csv").read_text().count("\n") == 10
    assert sorted(np.load(tmp_path / "pred" / "figure_maps.npz").files) == ["img0", "img1", "img2"]
    stage1a = M.evaluate(lambda im: {"embedding": np.eye(9, 4, dtype=np.float32)[np.rint(im[:, 0, 0, 0] * 100)
                                                                                  .astype(int)]},
                         split, c, stage=_stage("stage1a"))["metrics"]
    assert set(stage1a) == {"triplet", "triplets", "loss"} and stage1a["loss"] == stage1a["triplet"]


# ---------------------------------------------------------------------------------------------------- report, grid
def _fake_run(folder, method, kl, cc, auroc=0.9):
    folder.mkdir(parents=True)
    c = cfg_lib.get_config(f"method={method}")
    (folder / "config.json").write_text(c.to_json_best_effort())
    ids = [f"img{i}" for i in range(6)]
    (folder / "results.json").write_text(json.dumps({"test": {"auroc": auroc, "kl": float(np.mean(kl)),
                                                              "kl_std": 0.1, "cc": float(np.mean(cc))}}))
    cases = {i: {"kl": float(k), "cc": float(v), "sim": float(v) / 2 + 0.3} for i, k, v in zip(ids, kl, cc)}
    (folder / "cases.json").write_text(json.dumps({"test": cases}))
    return cases


def test_report_tables_and_ttests_against_sibling_runs(tmp_path):
    rng = np.random.default_rng(2)
    kl_mt, cc_mt = rng.uniform(0.8, 1.2, 6), rng.uniform(0.2, 0.4, 6)
    _fake_run(tmp_path / "mt", "mt_unet", kl_mt, cc_mt, auroc=0.81)
    _fake_run(tmp_path / "unet", "unet_s", kl_mt + 0.1, cc_mt - 0.1)
    mt_dir = tmp_path / "mt" / "predictions"
    mt_dir.mkdir()
    np.savez(mt_dir / "figure_maps.npz", img1=np.ones((8, 6)))
    kl, cc = kl_mt - rng.uniform(0, 0.2, 6), cc_mt + rng.uniform(0, 0.2, 6)
    cases = [{"case_id": f"img{i}", "scores": {"kl": kl[i], "cc": cc[i], "sim": kl[i] / 3}} for i in range(6)]
    figures = {"CHF": {"image": np.zeros((8, 6)), "gaze": np.ones((8, 6)), "label": 1, "has_gaze": True,
                       "saliency": np.ones((8, 6)), "gradcam": np.ones((1, 1, 3)), "dicom_id": "img1"}}
    results = {"test": {"metrics": {"auroc": 0.95, "kl": float(kl.mean()), "cc": float(cc.mean())},
                        "cases": cases, "figures": figures}, "stages": {}, "data_info": {}}
    own = tmp_path / "ours"
    own.mkdir()
    c = cfg_lib.get_config("")
    (own / "config.json").write_text(c.to_json_best_effort())
    text = open(methods.get("cxrgazelearn").report(results, c, str(own))).read()
    assert "| Metric | Ours | MT-UNet |" in text and "| Metric | Ours | MT-UNet | UNet_S |" in text
    assert "| AUC ↑ | 0.950 | 0.810 |" in text
    t = ttest_rel(kl, kl_mt)
    assert f"t={t.statistic:.2f}, p={t.pvalue:.3g} (n=6)" in text
    assert (own / "figures" / "fig2.png").exists()
    other_seed = cfg_lib.get_config("seed=1")
    assert methods.get("cxrgazelearn").report(results, other_seed, str(own)) and "Comparison runs found next to this one: none" in open(
        own / "report.md").read()


def test_tables12_grid_aggregates_with_paired_tests(tmp_path):
    from gazejax.experiments import runner as experiments, tables as experiments_tables

    grid = cfg_lib.get_grid("tables12")
    assert [c["method"] for c in grid["cells"]][-1] == "cxrgazelearn"
    assert {c["method"] for c in grid["cells"]} == set(cfg_lib.METHODS)
    rng, kls = np.random.default_rng(4), {}
    for cell in grid["cells"]:
        kls[cell["method"]] = rng.uniform(0.5, 1.0, 6)
        _fake_run(tmp_path / "cells" / experiments.cell_name(cell), cell["method"], kls[cell["method"]],
                  rng.uniform(size=6))
    markdown = experiments_tables.aggregate(str(tmp_path), grid["cells"], grid, experiments.cell_name)["markdown"]
    t = ttest_rel(kls["unet_s"], kls["cxrgazelearn"])
    assert f"UNet_S: t={t.statistic:.3f}, p={t.pvalue:.4g}, n=6" in markdown
    assert "Table 1" in markdown and "| MT-UNet |" in markdown
    with pytest.raises(ValueError):
        cfg_lib.get_grid("table3")


# ---------------------------------------------------------------------------------------------------- end to end
def _tiny_config(tmp_path):
    c = cfg_lib.get_config("method=cxrgazelearn")
    c.data.image_size, c.data.gaze_grids = (32, 32), {"saliency": (32, 32)}
    c.data.cache_dir, c.data.num_threads = str(tmp_path / "cache"), 1
    c.data.synthetic.update({"dir": str(tmp_path), "images": 30, "seed": 1, "size": (64, 64)})
    c.model.update({"densenet_growth": 4, "densenet_blocks": (1, 1, 1, 1), "densenet_init_features": 8,
                    "unet_widths": (2, 2, 4, 4, 4), "detach": False})  # gradients reach frozen modules
    c.batch_size, c.epochs, c.stage_epochs = 24, 1, {"stage1b": 2}  # 24 training images: one step per epoch
    c.eval.batch, c.log_every_steps, c.checkpoint.keep, c.checkpoint.async_save = 8, 1, 10, False
    return c


def _scripted_monitor(method):
    """stage1b's two validations report AUC 0.9 then 0.1, so its best checkpoint is its first step."""
    calls = []

    def evaluate(predict, split, config, out_dir=None, stage=None):
        res = method.evaluate(predict, split, config, out_dir, stage)
        if stage is not None and stage.name == "stage1b" and len(calls) < 2:
            res["metrics"]["auroc"] = (0.9, 0.1)[len(calls)]
            calls.append(1)
        return res

    return dataclasses.replace(method, evaluate=evaluate)


# ---------------------------------------------------------------------------------------------------- issue 14
def test_hs_is_the_papers_histogram_similarity_not_sim():
    pred, gt = np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])
    # P = [.1 .2 .3 .4], Q = [.4 .3 .2 .1]: minima .1 .2 .2 .1
    assert sal.hs(pred, gt) == pytest.approx(0.6)
    assert sal.sim(pred, gt) == pytest.approx(1 / 3)  # min-max first: [0 1/6 1/3 1/2] vs [1/2 1/3 1/6 0]
    # an offset (a softmax's floor) lowers HS; SIM's min-max removes it
    assert sal.hs(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == pytest.approx(2 / 3)
    assert sal.sim(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert sal.hs(3 * gt, gt) == pytest.approx(1.0) and sal.hs(np.array([1.0, 0]), np.array([0, 1.0])) == 0.0
    assert sal.hs(np.zeros(4), gt) == 0.0
    with pytest.raises(ValueError, match="hs: maps must be non-negative"):
        sal.hs(np.array([-1.0, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="hs: pred shape"):
        sal.hs(np.ones(3), np.ones(4))


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.slow
def test_stage1_trains_the_whole_densenet201_and_injects_transition3():
    from gazejax import models

    paper = cfg_lib.get_config("preset=paper")
    encoder = models.build("densenet_encoder", **M.encoder_kwargs(paper))
    shapes = jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), np.zeros((1, 64, 64, 1)))
    out = jax.eval_shape(lambda v, x: encoder.apply(v, x, train=False), shapes, np.zeros((1, 64, 64, 1)))
    # torchvision densenet201: 20,013,928 parameters, of which the classifier has 1920 * 1000 + 1000
    assert _count(shapes["params"]["features"]) == 20_013_928 - 1_921_000 == 18_092_928
    assert _count(shapes["params"]["dnet_head"]) == 1920 * 3 + 3
    stage1b = next(s for s in M.stages(paper) if s.name == "stage1b")
    keep = optim.path_filter(list(stage1b.trainable))
    flags = jax.tree_util.tree_map_with_path(lambda p, _: keep(optim.path_string(p)), shapes["params"])
    assert all(jax.tree.leaves(flags))
    assert out["map"].shape == (1, 2, 2, 896) and out["embedding"].shape == (1, 1920)  # transition3; norm5
    assert out["gradcam"].shape == (1, 2, 2, 3)


def _tiny_net():
    from gazejax import models

    return models.build("cxrgazelearn", widths=(2, 2, 4, 4, 4), encoder_kwargs={
        "num_classes": 3, "growth_rate": 4, "block_config": (1, 1, 1, 1), "num_init_features": 8})


@pytest.mark.slow
def test_frozen_parts_normalise_with_running_statistics_and_keep_them():
    net, rng = _tiny_net(), np.random.default_rng(0)
    x = rng.uniform(size=(4, 32, 32, 1)).astype(np.float32)
    v = jax.jit(lambda a: net.init(jax.random.key(0, impl="rbg"), a))(x)
    v = dict(v, batch_stats=jax.tree.map(lambda a: a + 0.3 + np.abs(rng.normal(size=a.shape)).astype(np.float32),
                                         v["batch_stats"]))
    run = lambda **kw: net.apply(v, x, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}, **kw)  # noqa
    evaluated = net.apply(v, x, train=False)
    out, new = run(train=True, inference=("densenet", "res_se_unet"))
    for key in ("embedding", "dnet_logits", "saliency"):
        np.testing.assert_allclose(out[key], evaluated[key], rtol=1e-5, atol=1e-6)
    for part in ("features", "res_se_unet"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["batch_stats"][part]),
                                                        jax.tree.leaves(v["batch_stats"][part])))
    assert "gradcam" not in out  # no Grad-CAM inside a training step
    out, new = run(train=True)  # training mode everywhere: batch statistics, and the running ones move
    assert not np.allclose(out["embedding"], evaluated["embedding"], rtol=1e-3)
    assert not np.array_equal(jax.tree.leaves(new["batch_stats"]["features"])[0],
                              jax.tree.leaves(v["batch_stats"]["features"])[0])
    with pytest.raises(ValueError, match="inference names \\['unet'\\] are not parts"):
        run(train=True, inference=("unet",))


def test_paper_preset_from_scratch_warns_in_log_and_report(tmp_path, caplog):
    paper = cfg_lib.get_config("preset=paper")
    with caplog.at_level("WARNING", logger="gazejax"):
        M.build_model(paper)
    assert "WARNING (paper preset): the DenseNet starts from scratch" in caplog.text
    results = {"test": {"metrics": {}, "cases": [], "figures": {}}, "stages": {}, "data_info": {}}
    (tmp_path / "run").mkdir()
    report = open(methods.get("cxrgazelearn").report(results, paper, str(tmp_path / "run"))).read()
    assert "**WARNING: the DenseNet starts from scratch" in report
    paper.model.init_from = "/ckpt/densenet201"
    assert M.scratch_warning(paper) is None
    assert M.scratch_warning(cfg_lib.get_config("preset=paper,method=unet_s")) is None
    assert M.scratch_warning(cfg_lib.get_config("preset=paper,method=dnet201")) is not None
