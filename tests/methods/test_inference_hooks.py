"""Tests of the chest X-ray methods' `Inference` hooks (ggcam, cxr_san, cxrgazelearn, gazat): with tiny models, the
probabilities `run` returns equal those the method's own evaluation computes for the same predict function and
images, the maps are what the docstrings say (checked against the raw model outputs), and stages that cannot
classify are refused (cxrgazelearn without a head, gazat's pretraining)."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from scipy.special import expit, softmax

from configs import cxr_san as cxr_config
from configs import cxrgazelearn as cgl_config
from configs import ggcam as ggcam_config
from gazejax import methods
from gazejax.data.cxr import files
from gazejax.data.cxr.pipeline import EvalSplit
from gazejax.engine.api import Stage
from gazejax.methods.cxr_san import spec as cxr_san
from gazejax.methods.cxrgazelearn import spec as cxrgazelearn
from gazejax.methods.gazat import evaluate as gazat_evaluate
from gazejax.methods.gazat import spec as gazat
from gazejax.methods.ggcam import spec as ggcam
from tests.methods.gazat.test_gazat import _tiny as gazat_tiny

B = 4
FAMILIES = ("ggcam", "cxr_san", "cxrgazelearn", "gazat")


def _images(size, seed=0) -> np.ndarray:
    """float32 [B, H, W, 1] in [0, 1], as `files.read_image` gives them."""
    return np.random.default_rng(seed).uniform(size=(B, *size, 1)).astype(np.float32)


def _predict(model, images):
    """The trainer's evaluation predict: jitted apply(train=False) on fresh (rbg) variables, numpy out."""
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(images)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return lambda x: jax.tree.map(lambda y: None if y is None else np.asarray(y), apply(variables, x))


def _split(images, **fields) -> EvalSplit:
    """An EvalSplit of `images` with per-image `fields` (records without organ masks)."""
    from types import SimpleNamespace

    records = [SimpleNamespace(dicom_id=f"img{i}", mask_names=()) for i in range(len(images))]
    return EvalSplit(records, [{"image": images[i], **{k: v[i] for k, v in fields.items()}}
                               for i in range(len(images))])


def _case_probs(result: dict, names) -> np.ndarray:
    """[N, C] probabilities of an evaluate result's per-image cases ("p_<name>" scores)."""
    return np.array([[case["scores"][f"p_{n}"] for n in names] for case in result["cases"]])


def _check_common(result, n_classes, multilabel):
    probs = result["probs"]
    assert probs.dtype == np.float64 and probs.shape == (B, n_classes)
    assert np.all((probs >= 0) & (probs <= 1))
    if not multilabel:
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_cxr_method_declares_an_image_hook(family):
    hook = methods.get(family).inference
    assert hook is not None and hook.kind == "image" and hook.preprocessing is files.preprocessing_spec


# ---------------------------------------------------------------------------------------------------- ggcam
@functools.lru_cache(maxsize=None)
def _ggcam(method):
    c = ggcam_config.get_config(f"backbone=resnet18,method={method}")
    c.data.image_size, c.model.resnet_width, c.eval.batch = (64, 64), 2, B
    images = _images((64, 64))
    return c, images, _predict(ggcam.build_model(c), images)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ggcam", "plain"])
def test_ggcam_probs_are_evaluate_s_and_the_map_is_the_predicted_class_cam(method, fast_compile):
    c, images, predict = _ggcam(method)
    hook = methods.get("ggcam").inference
    result = hook.run(predict, images, c, None)
    _check_common(result, 3, False)
    labels = np.array([0, 1, 2, 0], np.int32)
    split = _split(images, label=labels, label_mask=np.ones(B, bool), has_gaze=np.zeros(B, bool),
                   gaze_cam=np.zeros((B, 2, 2, 1), np.float32))
    np.testing.assert_array_equal(result["probs"], _case_probs(ggcam.evaluate(predict, split, c), ggcam.CLASSES))
    out = predict(images)
    predicted = np.argmax(out["logits"], 1)
    assert result["map"].dtype == np.float32 and result["map"].shape == (B, 2, 2)
    for i, k in enumerate(predicted):
        np.testing.assert_array_equal(result["map"][i], out["cam"][i, ..., k])
    assert "CAM of the predicted class" in hook.map_name(c, None)
    assert hook.labels(c) == ("Normal", "CHF", "pneumonia") and hook.multilabel(c) is False


def test_ggcam_with_a_stand_in_model_matches_evaluate():
    """The fast tier's check: any predict function (here image statistics, no network) gives evaluate's
    probabilities and the CAM channel of the arg-max class."""
    def predict(images):
        x = np.asarray(images)[..., 0]
        m, s = x.mean((1, 2)), x[:, ::2].std((1, 2))
        logits = np.stack([4 - 20 * m, 0.5 + s, 20 * m - 6], 1)  # dark images class 0, bright ones class 2
        cam = x.reshape(len(x), 2, 16, 2, 16).mean((2, 4))[..., None] * np.array([1.0, -2.0, 3.0])
        return {"logits": logits.astype(np.float32), "cam": cam.astype(np.float32)}

    c = ggcam_config.get_config("method=plain")
    c.eval.batch = 3  # evaluate predicts in batches of 3 and 1: probabilities do not depend on the batching
    images = _images((32, 32), seed=5) * (np.arange(1, B + 1) / B)[:, None, None, None].astype(np.float32)
    result = methods.get("ggcam").inference.run(predict, images, c, None)
    split = _split(images, label=np.array([0, 1, 2, 0], np.int32), label_mask=np.ones(B, bool),
                   has_gaze=np.zeros(B, bool), gaze_cam=np.zeros((B, 2, 2, 1), np.float32))
    np.testing.assert_array_equal(result["probs"], _case_probs(ggcam.evaluate(predict, split, c), ggcam.CLASSES))
    out = predict(images)
    predicted = np.argmax(out["logits"], 1)
    assert len(set(predicted)) > 1  # the test tells classes apart
    np.testing.assert_array_equal(result["map"], out["cam"][np.arange(B), ..., predicted])


# ---------------------------------------------------------------------------------------------------- cxr_san
@functools.lru_cache(maxsize=None)
def _cxr_san(method):
    c = cxr_config.get_config(f"method={method},backbone=resnet18")
    c.data.image_size, c.data.gaze_grids, c.eval.batch = (64, 64), cxr_config.gaze_grids((64, 64)), B
    c.model.update({"resnet_width": 2, "san_width": 2, "aab_heads": 1, "aab_head_dim": 4})
    images = _images((64, 64), seed=1)
    return c, images, _predict(cxr_san.build_model(c), images)


@pytest.mark.slow
@pytest.mark.parametrize("method, grid", [("ours", (4, 4)), ("gaze_loss", (2, 2)), ("backbone", None)])
def test_cxr_san_probs_are_evaluate_s_sigmoids_and_the_map_its_predicted_gaze(method, grid, fast_compile):
    c, images, predict = _cxr_san(method)
    hook = methods.get("cxr_san").inference
    result = hook.run(predict, images, c, None)
    _check_common(result, 5, True)
    assert hook.multilabel(c) is True and hook.labels(c) == cxr_san.FINDINGS
    rng = np.random.default_rng(2)
    split = _split(images, label=(rng.random((B, 5)) < 0.5).astype(np.float32), label_mask=np.ones((B, 5), bool),
                   has_gaze=np.zeros(B, bool), gaze_san=np.zeros((B, 4, 4, 1), np.float32),
                   gaze_e4=np.zeros((B, 2, 2, 1), np.float32))
    np.testing.assert_array_equal(result["probs"], _case_probs(cxr_san.evaluate(predict, split, c), cxr_san.SLUGS))
    out = predict(images)
    if grid is None:
        assert result["map"] is None and hook.map_name(c, None) == ""
        return
    g = out["gaze"][..., 0].astype(np.float64)
    expected = softmax(g.reshape(B, -1), 1).reshape(g.shape) if method == "gaze_loss" else expit(g)
    assert result["map"].dtype == np.float32 and result["map"].shape == (B, *grid)
    np.testing.assert_allclose(result["map"], expected, rtol=1e-6)
    assert "gaze" in hook.map_name(c, None)


def test_cxr_san_matched_backbone_has_no_map_although_its_network_outputs_gaze():
    c = cxr_config.get_config("method=backbone_matched")
    out = {"logits": np.zeros((B, 5), np.float32), "gaze": np.ones((B, 2, 2, 1), np.float32)}
    result = methods.get("cxr_san").inference.run(lambda x: out, _images((8, 8)), c, None)
    assert result["map"] is None and methods.get("cxr_san").inference.map_name(c, None) == ""
    np.testing.assert_array_equal(result["probs"], np.full((B, 5), 0.5))


# ---------------------------------------------------------------------------------------------------- cxrgazelearn
@functools.lru_cache(maxsize=None)
def _cxrgazelearn():
    c = cgl_config.get_config("")
    c.data.image_size, c.data.gaze_grids, c.eval.batch = (32, 32), {"saliency": (32, 32)}, B
    c.model.update({"densenet_growth": 4, "densenet_blocks": (1, 1, 1, 1), "densenet_init_features": 8,
                    "unet_widths": (2, 2, 4, 4, 4)})
    images = _images((32, 32), seed=3)
    return c, images, _predict(cxrgazelearn.build_model(c), images)


def _stage(config, name) -> Stage:
    return next(s for s in cxrgazelearn.stages(config) if s.name == name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stage1b", "stage3"])
def test_cxrgazelearn_probs_follow_the_stage_head_as_evaluate_does(name, fast_compile):
    c, images, predict = _cxrgazelearn()
    hook, stage = methods.get("cxrgazelearn").inference, _stage(c, name)
    result = hook.run(predict, images, c, stage)
    _check_common(result, 3, False)
    split = _split(images, label=np.array([0, 1, 2, 1], np.int32), label_mask=np.ones(B, bool),
                   has_gaze=np.zeros(B, bool), gaze_saliency=np.zeros((B, 32, 32, 1), np.float32))
    expected = _case_probs(cxrgazelearn.evaluate(predict, split, c, stage=stage), cxrgazelearn.CLASSES)
    np.testing.assert_array_equal(result["probs"], expected)
    out = predict(images)
    if name == "stage3":  # the fusion head and the saliency distribution
        np.testing.assert_allclose(result["probs"], softmax(out["logits"].astype(np.float64), 1), rtol=1e-12)
        assert result["map"].shape == (B, 32, 32) and result["map"].dtype == np.float32
        np.testing.assert_allclose(result["map"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert "saliency" in hook.map_name(c, stage)
    else:  # the DenseNet head and its Grad-CAM of the predicted class
        predicted = np.argmax(out["dnet_logits"], 1)
        np.testing.assert_allclose(result["probs"], softmax(out["dnet_logits"].astype(np.float64), 1), rtol=1e-12)
        assert result["map"].shape == (B, 1, 1)
        np.testing.assert_array_equal(result["map"], out["gradcam"][np.arange(B), ..., predicted])
        assert "Grad-CAM" in hook.map_name(c, stage)


@pytest.mark.parametrize("name", ["stage1a", "stage2"])
def test_cxrgazelearn_stage_without_a_head_is_refused(name):
    c = cgl_config.get_config("")
    hook = methods.get("cxrgazelearn").inference
    never = lambda x: pytest.fail("predict must not run")  # noqa: E731
    with pytest.raises(ValueError, match=rf"stage {name} has no classification head.*\(stage1b, stage3\)"):
        hook.run(never, _images((8, 8)), c, _stage(c, name))
    with pytest.raises(ValueError, match="no classification head"):
        hook.map_name(c, _stage(c, name))
    unet = cgl_config.get_config("method=unet_s")
    with pytest.raises(ValueError, match=r"stage stage2 has no classification head.*none in method 'unet_s'"):
        hook.run(never, _images((8, 8)), unet, None)


# ---------------------------------------------------------------------------------------------------- gazat
@functools.lru_cache(maxsize=None)
def _gazat(backbone, label_set):
    c = gazat_tiny("gazat", size=32 if backbone.startswith("vit") else 64, backbone=backbone,
                   **{"data.label_set": label_set})
    c.eval.saliency_grid = (8, 8)
    images = _images(tuple(c.data.image_size), seed=4)
    model = gazat.build_model(c)
    variables = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), *gazat.model_inputs(
        gazat.init_batch(c)), train=False))()
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return c, images, lambda x: jax.tree.map(np.asarray, apply(variables, x))


def _finetune(config) -> Stage:
    return next(s for s in gazat.stages(config) if s.name.startswith("finetune_"))


@pytest.mark.slow
@pytest.mark.parametrize("backbone, label_set", [("resnet18", "3class"), ("resnet18", "5label"),
                                                 ("vit_b_16", "3class")])
def test_gazat_probs_are_evaluate_s_and_the_map_its_scored_one(backbone, label_set, fast_compile):
    c, images, predict = _gazat(backbone, label_set)
    hook, stage = methods.get("gazat").inference, _finetune(c)
    multilabel = label_set == "5label"
    result = hook.run(predict, images, c, stage)
    _check_common(result, 3 if label_set == "3class" else 5, multilabel)
    assert hook.multilabel(c) is multilabel and len(hook.labels(c)) == result["probs"].shape[1]
    run = gazat_evaluate.forward(predict, [{"image": x} for x in images], B)  # evaluate's own forward pass
    np.testing.assert_array_equal(result["probs"], gazat_evaluate.probabilities(run["logits"], multilabel))
    predicted = np.argmax(run["logits"], 1)
    if backbone == "resnet18":  # ReLU(CAM) of the predicted class, min-max normalised per image
        cam = np.maximum(run["cam"][np.arange(B), ..., predicted], 0)
        lo, hi = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(result["map"], (cam - lo) / np.where(hi > lo, hi - lo, 1), atol=1e-6)
        assert result["map"].shape == (B, 2, 2) and "Grad-CAM" in hook.map_name(c, stage)
    else:  # the layers' attention combined on the finest grid: evaluate's peak map of "attn_"
        expected = gazat_evaluate.model_maps(run, (8, 8), None)["attn_"][1]
        np.testing.assert_allclose(result["map"], expected, atol=1e-6)
        assert result["map"].shape == (B, 4, 4) and "attention" in hook.map_name(c, stage)
    assert result["map"].dtype == np.float32 and 0 <= result["map"].min() and result["map"].max() <= 1


def test_gazat_pretraining_is_refused_naming_the_fine_tuning_stages():
    c = gazat_tiny("gazat")
    hook = methods.get("gazat").inference
    pretrain = gazat.stages(c)[0]
    tuned = ", ".join(s.name for s in gazat.stages(c)[1:])
    never = lambda x: pytest.fail("predict must not run")  # noqa: E731
    for stage in (pretrain, None):
        with pytest.raises(ValueError, match=rf"stage pretrain has no trained classifier.*\({tuned}\)"):
            hook.run(never, _images((32, 32)), c, stage)
    with pytest.raises(ValueError, match="linear probe"):
        hook.map_name(c, pretrain)
    supervised = gazat_tiny("supervised")
    assert "Grad-CAM" in hook.map_name(supervised, None)  # one stage, fine-tuned from scratch
