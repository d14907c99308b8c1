"""The GG-CAM method as data (configs/ggcam.py + gazejax.methods.ggcam): config parsing and presets, the +3
parameters over the plain network, the losses against hand-computed Eq. 7/9-11, the evaluation against scikit-learn
and hand-made CAM peaks, the ReduceLROnPlateau stages, and one tiny end-to-end run through the trainer."""
from __future__ import annotations

import json
import math
import types

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import ggcam as ggcam_config
from gazejax.metrics import classification as cls
from gazejax.methods.ggcam import spec as ggcam


def _n_params(config) -> int:
    model = ggcam.build_model(config)
    x = ggcam.init_batch(config)["image"]
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------------- config
def test_config_parses_arguments_and_rejects_bad_ones():
    c = ggcam_config.get_config("preset=paper,backbone=efficientnet_v2_s,seed=3,method=plain")
    assert (c.preset, c.model.backbone, c.seed, c.method, c.method_family) == (
        "paper", "efficientnet_v2_s", 3, "plain", "ggcam")
    assert tuple(c.data.image_size) == (1536, 1280) and tuple(c.data.gaze_grids["cam"]) == (48, 40)
    assert c.data.split == "70/10/20" and c.data.gaze_kind == "ggcam" and c.optim.name == "adam"
    for bad in ("preset=huge", "method=ours", "backbone"):
        with pytest.raises(ValueError):
            ggcam_config.get_config(bad)
    with pytest.raises(ValueError, match="unknown config argument"):
        ggcam_config.get_config("lr=1")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "paper"])
@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_v2_s"])
def test_presets_build_and_cam_is_at_stride_32(preset, backbone):
    c = ggcam_config.get_config(f"preset={preset},backbone={backbone}")
    model = ggcam.build_model(c)
    x = ggcam.init_batch(c)["image"]
    variables = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)
    out = jax.eval_shape(lambda v, y: model.apply(v, y, train=False), variables, x)
    h, w = c.data.image_size
    assert out["cam"].shape == (1, h // 32, w // 32, 3) and out["logits"].shape == (1, 3)
    assert tuple(c.data.gaze_grids["cam"]) == (h // 32, w // 32)


def test_table1_learning_rates_and_plateau_stages():
    lrs = {}
    for backbone in ("resnet50", "efficientnet_v2_s"):
        for method in ("ggcam", "plain"):
            c = ggcam_config.get_config(f"preset=paper,backbone={backbone},method={method}")
            lrs[backbone, method] = ggcam.stages(c)[0].optimizer["lr"]
    assert lrs == {("resnet50", "ggcam"): 7e-3, ("resnet50", "plain"): 1e-4,  # Table 1, Zhu et al.
                   ("efficientnet_v2_s", "ggcam"): 6e-3, ("efficientnet_v2_s", "plain"): 1e-3}
    # one stage: ReduceLROnPlateau(0.1, P) and early stopping (2P + 3 epochs) on the validation loss (Sec. 4.2)
    for backbone, method, p, stop in (("efficientnet_v2_s", "ggcam", 40, 83), ("resnet50", "ggcam", 30, 63),
                                      ("efficientnet_v2_s", "plain", 25, 53), ("resnet50", "plain", 50, 103)):
        c = ggcam_config.get_config(f"preset=paper,backbone={backbone},method={method}")
        (st,) = ggcam.stages(c)
        assert (st.monitor, st.monitor_mode, st.early_stop_patience, st.epochs) == ("val/loss", "min", stop, 1024)
        assert dict(st.plateau) == {"monitor": "val/loss", "mode": "min", "factor": 0.1, "patience": p}
    c.eval_every_epochs = 2  # patience counts epochs, converted to evaluations
    (st,) = ggcam.stages(c)
    assert (st.plateau["patience"], st.early_stop_patience) == (25, 52)
    c.method = "plain"  # a grid override of the method alone picks the plain row (P = 25)
    c.model.backbone, c.eval_every_epochs = "efficientnet_v2_s", 1
    assert ggcam.stages(c)[0].plateau["patience"] == 25 and ggcam.stages(c)[0].optimizer["lr"] == 1e-3
    demo = ggcam.stages(ggcam_config.get_config(""))
    assert len(demo) == 1 and demo[0].early_stop_patience == 63 and demo[0].plateau["patience"] == 30
    paper, demo = ggcam_config.get_config("preset=paper"), ggcam_config.get_config("")
    # Table 1's ResNet value; EffNet starts at the reference code's e^-16 (Table 1's e^-25 overflows float32 Adam)
    assert (paper.table1.resnet_ggcam.sigma_sm, paper.table1.efficientnet_ggcam.sigma_sm) == (2.0e-9, math.exp(-16))
    # the demo's ~470 steps cannot climb from Table 1's sigma_sm (see configs/ggcam.py _demo): it starts at 0.1
    assert demo.table1.resnet_ggcam.sigma_sm == demo.table1.efficientnet_ggcam.sigma_sm == 0.1


def test_anova_grid():
    grid = ggcam_config.get_grid("anova")
    assert len(grid["cells"]) == 2 * 2 * 5
    assert {(c["model.backbone"], c["method"]) for c in grid["cells"]} == {
        (b, m) for b in ("resnet50", "efficientnet_v2_s") for m in ("ggcam", "plain")}
    first, anova = grid["tables"][0], grid["tables"][1]
    assert first["row"] == ("model.backbone", "method") and first["metrics"][0][0] == "auroc_ovo"
    # Fig. 3's ANOVA is on the paper's "multi-class AUC [13]": Hand & Till's one-vs-one AUROC
    assert anova["metrics"] == (("auroc_ovo", "AUROC (OvO)"),) and anova.get("stats", True)
    with pytest.raises(ValueError):
        ggcam_config.get_grid("table9")


def test_anova_grid_aggregates_to_one_anova_per_backbone(tmp_path):
    from scipy.stats import f_oneway

    from gazejax.experiments import runner as experiments, tables as experiments_tables

    grid = ggcam_config.get_grid("anova")
    rng, values = np.random.default_rng(0), {}
    for cell in grid["cells"]:
        folder = tmp_path / "cells" / experiments.cell_name(cell)
        folder.mkdir(parents=True)
        auroc = (0.8 if cell["method"] == "ggcam" else 0.72) + 0.02 * rng.normal()
        values.setdefault((cell["model.backbone"], cell["method"]), []).append(auroc)
        # OvR values that would give other F statistics: the ANOVA must read auroc_ovo
        ovr = 0.5 + 0.3 * rng.random()
        (folder / "results.json").write_text(json.dumps({"test": {"auroc_ovo": auroc, "auroc": ovr}}))
    markdown = experiments_tables.aggregate(str(tmp_path), grid["cells"], grid, experiments.cell_name)["markdown"]
    for backbone in ("resnet50", "efficientnet_v2_s"):
        f = f_oneway(values[backbone, "ggcam"], values[backbone, "plain"]).statistic
        assert f"| AUROC (OvO) | {backbone} |" in markdown and f"F={f:.3f}" in markdown
    assert "| ResNet +GG-CAM |" in markdown and "| EffNet standard |" in markdown


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet_v2_s"])
def test_ggcam_has_exactly_three_parameters_more_than_plain(backbone):
    ggcam_cfg = ggcam_config.get_config(f"backbone={backbone},method=ggcam")
    plain_cfg = ggcam_config.get_config(f"backbone={backbone},method=plain")
    assert _n_params(ggcam_cfg) - _n_params(plain_cfg) == 3


@pytest.mark.slow
def test_plain_cam_is_eq4_of_its_linear_head():
    c = ggcam_config.get_config("backbone=resnet18,method=plain")
    c.data.image_size, c.model.resnet_width = (64, 64), 2
    model = ggcam.build_model(c)
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    variables = jax.jit(lambda y: model.init(jax.random.key(0, impl="rbg"), y, train=False))(x)  # rbg: fast init
    out = jax.jit(lambda v, y: model.apply(v, y, train=False))(variables, x)
    bias = np.asarray(variables["params"]["classifier"]["bias"])
    np.testing.assert_allclose(np.asarray(out["cam"]).mean(axis=(1, 2)) + bias, out["logits"], atol=1e-5)  # Eq. 5
    assert set(variables["params"]) == {"backbone", "classifier"}


# ---------------------------------------------------------------------------------------------------- losses
def _batch_and_outputs(seed=0, b=4, grid=(3, 2)):
    rng = np.random.default_rng(seed)
    outputs = {"logits": np.zeros((b, 3), np.float32),  # uniform softmax: CE = ln 3 whatever the label
               "cam": rng.normal(size=(b, *grid, 3)).astype(np.float32),
               "log_alpha": np.float32(0.4), "log_sigma_sm": np.float32(-0.5), "log_sigma_ce": np.float32(0.2)}
    batch = {"label": np.array([0, 1, 2, 1], np.int32)[:b], "label_mask": np.ones(b, bool),
             "has_gaze": np.array([True, True, False, True])[:b],
             "gaze_cam": rng.uniform(size=(b, *grid, 1)).astype(np.float32)}
    return batch, outputs


def _eq11_by_hand(batch, outputs) -> float:
    alpha = math.exp(outputs["log_alpha"])
    per = [np.mean((_sigmoid(alpha * outputs["cam"][i, ..., y]) - batch["gaze_cam"][i, ..., 0]) ** 2)
           for i, y in enumerate(batch["label"]) if batch["has_gaze"][i]]  # Eq. 9-10, images with gaze
    sm, ce = float(np.mean(per)), math.log(3.0)
    s_sm, s_ce = math.exp(outputs["log_sigma_sm"]), math.exp(outputs["log_sigma_ce"])
    return sm / (2 * s_sm**2) + ce / s_ce**2 + math.log(s_sm + 1) + math.log(s_ce + 1)  # Eq. 11


def test_plain_loss_is_ce_and_ignores_gaze():
    batch, outputs = _batch_and_outputs()
    plain = ggcam_config.get_config("method=plain")
    outputs["logits"] = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    loss, metrics = ggcam.loss_fn(outputs, batch, None, plain)
    logp = outputs["logits"] - np.log(np.exp(outputs["logits"]).sum(1, keepdims=True))
    np.testing.assert_allclose(float(loss), -np.mean(logp[np.arange(4), batch["label"]]), rtol=1e-5)  # Eq. 7
    shuffled = dict(batch, gaze_cam=batch["gaze_cam"][::-1] * 0.3 + 0.5, has_gaze=~batch["has_gaze"])
    assert float(ggcam.loss_fn(outputs, shuffled, None, plain)[0]) == float(loss)
    assert set(metrics) == {"loss_ce"}


def test_ggcam_loss_is_eq11_and_follows_the_true_class():
    batch, outputs = _batch_and_outputs()
    cfg = ggcam_config.get_config("method=ggcam")
    loss, metrics = ggcam.loss_fn(outputs, batch, None, cfg)
    np.testing.assert_allclose(float(loss), _eq11_by_hand(batch, outputs), rtol=1e-5)
    relabelled = dict(batch, label=np.array([1, 2, 0, 0], np.int32))  # CE unchanged (uniform logits): only L_sm
    loss2, metrics2 = ggcam.loss_fn(outputs, relabelled, None, cfg)
    np.testing.assert_allclose(float(metrics2["loss_ce"]), float(metrics["loss_ce"]), rtol=1e-6)
    assert abs(float(loss2) - float(loss)) > 1e-3
    np.testing.assert_allclose(float(loss2), _eq11_by_hand(relabelled, outputs), rtol=1e-5)
    shuffled = dict(batch, gaze_cam=batch["gaze_cam"][[3, 0, 1, 2]])
    assert abs(float(ggcam.loss_fn(outputs, shuffled, None, cfg)[0]) - float(loss)) > 1e-4
    np.testing.assert_allclose(float(metrics["alpha"]), math.exp(0.4), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- evaluation
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40) + np.eye(3)[labels] * 0.3
    probs /= probs.sum(1, keepdims=True)
    m = cls.summary(labels, probs, ("Normal", "CHF", "pneumonia"))
    np.testing.assert_allclose(m["auroc"], roc_auc_score(labels, probs, multi_class="ovr"), rtol=1e-12)
    np.testing.assert_allclose(m["auroc_ovo"], roc_auc_score(labels, probs, multi_class="ovo"), rtol=1e-12)
    np.testing.assert_allclose(m["auroc_CHF"], roc_auc_score(labels == 1, probs[:, 1]), rtol=1e-12)
    pred = probs.argmax(1)
    np.testing.assert_allclose(m["recall_pneumonia"], np.mean(pred[labels == 2] == 2))
    np.testing.assert_allclose(m["precision_Normal"], np.mean(labels[pred == 0] == 0))


@pytest.mark.parametrize("n_classes, n, levels", [(3, 60, 0), (3, 25, 5), (4, 80, 0), (4, 40, 4)])
def test_auroc_ovo_matches_sklearn(n_classes, n, levels):
    """`auroc_ovo` (Hand & Till [13], the AUC of Fig. 3) against scikit-learn's one-vs-one macro AUROC, with
    unbalanced classes and, where levels > 0, scores rounded to few values (ties within and across classes)."""
    rng = np.random.default_rng(n + n_classes)
    labels = np.concatenate([np.arange(n_classes), rng.choice(n_classes, n - n_classes, p=_skewed(n_classes))])
    probs = rng.dirichlet(np.ones(n_classes), n) + 0.4 * np.eye(n_classes)[labels] * rng.random((n, 1))
    if levels:
        probs = np.round(probs * levels) + 1e-3  # ties; a small floor keeps every row's sum positive
    probs /= probs.sum(1, keepdims=True)
    expected = roc_auc_score(labels, probs, multi_class="ovo")
    np.testing.assert_allclose(cls.auroc_ovo(labels, probs), expected, rtol=1e-12)
    assert not np.isclose(expected, roc_auc_score(labels, probs, multi_class="ovr"))  # a different number


def _skewed(k: int) -> np.ndarray:
    p = np.arange(1, k + 1, dtype=float)
    return p / p.sum()


class _Split:
    """An EvalSplit stand-in: records (dicom_id, mask_names) and indexable examples."""

    def __init__(self, examples, records):
        self.examples, self.records = examples, records

    def __len__(self):
        return len(self.records)


def _fake_split(n_per_class=2, size=64, grid=(2, 2)) -> _Split:
    """Hand-made examples: heart mask = top-left quadrant, lungs = bottom half; names in EGD-CXR order."""
    names = ("left_lung", "right_lung", "mediastanum", "aortic_knob")
    masks = np.zeros((size, size, 4), np.uint8)
    masks[size // 2:, :size // 2, 0] = masks[size // 2:, size // 2:, 1] = 1
    masks[:size // 2, :size // 2, 2] = 1
    examples, records = [], []
    for i, y in enumerate(np.repeat(np.arange(3), n_per_class)):
        examples.append({"image": np.full((size, size, 1), i / 10, np.float32), "label": np.int32(y),
                         "label_mask": np.bool_(True), "has_gaze": np.bool_(True),
                         "gaze_cam": np.full((*grid, 1), 0.5, np.float32), "organ_masks": masks,
                         "has_organ_masks": np.ones(4, bool)})
        records.append(types.SimpleNamespace(dicom_id=f"img{i}", mask_names=names))
    return _Split(examples, records)


@pytest.mark.parametrize("method", ["ggcam", "plain"])
def test_evaluate_scores_auroc_and_eq12_peaks(method, tmp_path):
    split = _fake_split()
    labels = np.array([ex["label"] for ex in split.examples])
    logits = np.array([[2.0, 0, 0], [0, 0, 1.0], [0, 3.0, 0], [1.0, 0, 0], [0, 0, 2.0], [0, 1.0, 0]], np.float32)
    # CAM peaks: image 2 (CHF) top-left = heart -> hit; image 3 (CHF) bottom-right -> miss;
    # images 4, 5 (pneumonia) bottom-left / top-right -> hit / miss. Normal images are not scored.
    peaks = {2: (0, 0), 3: (1, 1), 4: (1, 0), 5: (0, 1)}
    cams = np.zeros((6, 2, 2, 3), np.float32)
    for i, (r, c) in peaks.items():
        cams[i, r, c, labels[i]] = 5.0

    def predict(images):
        idx = np.rint(images[:, 0, 0, 0] * 10).astype(int)
        out = {"logits": logits[idx], "cam": cams[idx]}
        if method == "ggcam":
            out.update(log_alpha=np.float32(0.0), log_sigma_sm=np.float32(-1.0), log_sigma_ce=np.float32(0.0))
        return out

    cfg = ggcam_config.get_config(f"method={method}")
    cfg.eval.batch = 4  # two batches, the second one partial
    res = ggcam.evaluate(predict, split, cfg, str(tmp_path / "pred"))
    m = res["metrics"]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(m["auroc"], roc_auc_score(labels, probs, multi_class="ovr"), rtol=1e-9)
    assert m["interp_CHF"] == 0.5 and m["interp_pneumonia"] == 0.5 and m["interp"] == 0.5
    assert res["interp_counts"] == {"CHF": (1, 2), "pneumonia": (1, 2)}
    np.testing.assert_allclose(m["accuracy"], np.mean(probs.argmax(1) == labels))
    ce = -np.mean(np.log(probs[np.arange(6), labels]))
    np.testing.assert_allclose(m["loss_ce"], ce, rtol=1e-5)
    if method == "ggcam":
        sm = np.mean([np.mean((_sigmoid(cams[i, ..., y]) - 0.5) ** 2) for i, y in enumerate(labels)])
        np.testing.assert_allclose(m["loss_sm"], sm, rtol=1e-5)
        np.testing.assert_allclose(m["loss"], sm / (2 * math.exp(-2.0)) + ce + math.log(math.exp(-1) + 1)
                                   + math.log(2), rtol=1e-5)
    assert set(res["figures"]) == {"Normal", "CHF", "pneumonia"}
    assert res["figures"]["CHF"]["dicom_id"] == "img2" and res["figures"]["CHF"]["organ"][0, 0]
    rows = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("dicom_id,label,pred")


def test_make_data_checks_the_gaze_grid_and_scales_blur():
    c = ggcam_config.get_config("")
    assert ggcam.gaze_sigma(c) == pytest.approx(500.0 * c.data.synthetic.size[0] / 3056)  # ResNet B = 500
    c.data.root = "/some/egd-cxr"
    assert ggcam.gaze_sigma(c) == 500.0
    c.model.backbone = "efficientnet_v2_s"
    assert ggcam.gaze_sigma(c) == 600.0
    c.data.gaze_grids = {"cam": (8, 8)}
    with pytest.raises(ValueError, match="CAM grid"):
        ggcam.make_data(c)


# ---------------------------------------------------------------------------------------------------- end to end
