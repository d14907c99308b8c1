"""Issue 14 ("trustworthy comparisons") for SAN+AAB on BraTS: +gaze* keeps the probability scale and supervises its
full-resolution head; the paper preset trains on gaze cases only, has a 64-wide AAB (c_h), infers on the whole
brain box and augments as open_brats2020."""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from configs import brats
from gazejax.data import transforms3d as t3d
from gazejax.data.brats import pipeline as brats_pipeline
from gazejax.methods.san_aab import evaluate as eval3d
from gazejax.methods.san_aab import report as san_report
from gazejax.methods.san_aab import spec as san_aab
from gazejax.models import build, segmenter
from gazejax.models.aab import AAB

TINY = dict(width=4, san_width=4, aab_heads=2, aab_head_dim=8)
SHAPE = (1, 16, 32, 32, 4)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _random_variables(model, x, seed=4):
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
        return (float(path[-1].key == "scale") + 0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), x))


# ------------------------------------------------------------------------------------------- 1. +gaze* attention


def _gaze_star_run(backbone="equiunet", width=4, **kw):
    model = build("gaze_segmenter", method="gaze_star", backbone=backbone, **{**TINY, "width": width, **kw})
    x = jax.random.uniform(jax.random.key(1), SHAPE)
    variables = _random_variables(model, x)

    def run(v, x, train):
        return model.apply(v, x, train=train, capture_intermediates=True, mutable=["intermediates"])

    return variables, jax.jit(run, static_argnums=2), x


@pytest.mark.slow
@pytest.mark.parametrize("backbone,head,width,kw", [("equiunet", "outconv", 4, {}), ("nnunet", "seg", 2, {}),
                                                   ("dmfnet", "seg", 16, {"norm": "in"})])  # DMFNet: no head bias
def test_gaze_star_feature_attention_is_the_head_on_1_plus_g_times_the_last_feature(backbone, head, width, kw):
    """seg = W ((1 + sigmoid(gaze)) * F) + b from the decoder's own head, identical in training and inference."""
    variables, run, x = _gaze_star_run(backbone, width, **kw)
    (train_out, _), (out, state) = run(variables, x, True), run(variables, x, False)
    np.testing.assert_allclose(train_out["seg"], out["seg"], rtol=1e-5, atol=1e-5)  # no train/test mismatch
    inter = state["intermediates"]
    # gaze logits = head + logit(prior 0.1); training outputs carry them at full resolution, inference keeps 4 keys
    gaze_logits = np.asarray(inter["gaze_head"]["__call__"][0], np.float64) + np.log(0.1 / 0.9)
    np.testing.assert_allclose(train_out["gaze_full"], gaze_logits, rtol=1e-5, atol=1e-5)
    assert train_out["gaze_full"].shape == SHAPE[:-1] + (1,) and set(out) == {"seg", "deep", "gaze", "survival"}
    last = np.asarray(inter["decoder"]["__call__"][0].last, np.float64)
    g = _sig(gaze_logits)
    p = variables["params"]["decoder"][head]
    kernel = np.asarray(p["kernel"], np.float64).reshape(-1, 3)
    want = ((1 + g) * last) @ kernel + (np.asarray(p["bias"]) if "bias" in p else 0.0)
    np.testing.assert_allclose(out["seg"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("std,want", [(None, 0.01), (0.0, np.sqrt(2.0))])  # None: the config's default
def test_gaze_star_head_starts_small_unless_asked_for_kaiming(std, want):
    """RetinaNet's prior init: kernel normal(0, 0.01) with the bias at the prior. With kaiming fan_out (std sqrt(2)
    for one output) the first gaze gradients wrecked the shared decoder feature (demo, ratio 0.5, seed 0: WT 11 %)."""
    cfg = brats.get_config("method=gaze_star")
    cfg.model.update(width=8, san_width=4, aab_heads=2, aab_head_dim=8)
    if std is not None:
        cfg.model.gaze_star_head_std = std
    model = san_aab.build_model(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 4)))["params"]
    kernel = np.asarray(params["gaze_head"]["kernel"]).ravel()  # 8 input channels, one output
    assert kernel.size == 8 and np.sqrt(np.mean(kernel**2)) == pytest.approx(want, rel=0.6)


def test_gaze_star_loss_is_eq4_on_the_full_resolution_head_against_the_upsampled_target():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(2, 32, 32, 32, 1)).astype(np.float32)
    target = rng.random((2, 2, 2, 2, 1)).astype(np.float32)
    outputs = {"seg": jnp.zeros((2, 32, 32, 32, 3)), "deep": [], "survival": None, "gaze_full": jnp.asarray(full),
               "gaze": jnp.asarray(full.reshape(2, 2, 16, 2, 16, 2, 16, 1).mean(axis=(2, 4, 6)))}
    batch = {"target": jnp.zeros((2, 32, 32, 32, 3)), "gaze": jnp.asarray(target),
             "has_gaze": jnp.asarray([True, False]), "survival": jnp.asarray([0, 0])}
    cfg = brats.get_config("method=gaze_star")
    _, metrics = san_aab.loss_fn(outputs, batch, None, cfg)
    # independent up-sampling: scipy linear zoom on the pixel-edge grid (half-pixel centres), edges clamped
    up = ndimage.zoom(target[0, ..., 0].astype(np.float64), 16, order=1, grid_mode=True, mode="nearest")
    p = _sig(full[0, ..., 0])
    bce = -(up * np.log(p) + (1 - up) * np.log(1 - p)).mean()  # Eq. 4 over the only sample with gaze
    np.testing.assert_allclose(float(metrics["loss_gaze"]), bce, rtol=1e-5)


def _ball_case():
    """A ball tumour (radius 10) whose gaze target is a max-normalised sum of Gaussians on fixations inside it."""
    idx = np.indices((48, 48, 48)).transpose(1, 2, 3, 0).astype(np.float64)
    tumour = np.linalg.norm(idx - 24, axis=-1) <= 10
    fixations = np.asarray([[24, 24, 24], [20, 26, 22], [28, 22, 27], [24, 30, 24]], np.float64)
    heat = sum(np.exp(-np.sum((idx - f) ** 2, -1) / (2 * 4.0 ** 2)) for f in fixations)
    return tumour, heat / heat.max()


def test_a_perfect_gaze_head_keeps_the_whole_tumour():
    """The old hard gate removes a large part of the whole tumour even with gaze = the target; the new forms don't."""
    tumour, heat = _ball_case()
    seg = np.where(tumour, 3.0, -3.0)[..., None]  # a confident, correct segmentation (p = 0.95 inside)
    gaze = np.log(np.clip(heat, 1e-6, 1 - 1e-6) / (1 - np.clip(heat, 1e-6, 1 - 1e-6)))[..., None]  # sigmoid = heat

    def kept(logits):
        return float((np.asarray(logits)[..., 0] > 0)[tumour].mean())

    assert kept(segmenter.gaze_modulated_logits(jnp.asarray(seg), jnp.asarray(gaze))) < 0.5  # old gate: 18 %
    # p (1 + g) / 2 halves p only where the map is ~0: the rim of the ball far from every fixation (2 %)
    assert kept(segmenter.gaze_output_attention_logits(jnp.asarray(seg), jnp.asarray(gaze))) > 0.95
    assert kept(segmenter.gaze_feature_attention_logits(jnp.asarray(seg), jnp.asarray(gaze), 0.0)) == 1.0
    sure = np.full_like(gaze, 30.0)  # g -> 1: the output form returns p unchanged
    np.testing.assert_allclose(_sig(segmenter.gaze_output_attention_logits(jnp.asarray(seg), jnp.asarray(sure))),
                               _sig(seg), rtol=1e-5)


def test_gaze_output_attention_formula():
    rng = np.random.default_rng(3)
    seg, gaze = rng.standard_normal((2, 4, 3)) * 4, rng.standard_normal((2, 4, 1)) * 4
    got = _sig(segmenter.gaze_output_attention_logits(jnp.asarray(seg), jnp.asarray(gaze)))
    np.testing.assert_allclose(got, _sig(seg) * (1 + _sig(gaze)) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value", [("gaze_star_attention", "nope"), ("gaze_star_prior", 1.0)])
def test_bad_gaze_star_settings_are_clear_errors(field, value):
    model = build("gaze_segmenter", method="gaze_star", **{field: value}, **TINY)
    with pytest.raises(ValueError, match=field):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(SHAPE, jnp.float32))


# ---------------------------------------------------------------------------------------------- 2. ratio pool


def _records(n=100):
    return [types.SimpleNamespace(case_id=f"c{i:03d}", has_seg=True, has_gaze=i % 2 == 0) for i in range(n)]


def test_paper_preset_draws_the_ratio_from_the_gaze_cases():
    cfg = brats.get_config("preset=paper,ratio=0.2").data
    parts = brats_pipeline.build_splits(_records(), cfg)
    records = {r.case_id: r for r in _records()}
    pool = [i for i in records if i not in {r.case_id for r in parts["test"] + parts["val"]}]
    assert cfg.ratio_pool == "preferred" and all(r.has_gaze for r in parts["train"])
    assert len(parts["train"]) == round(0.2 * sum(records[i].has_gaze for i in pool))
    assert brats.get_config("preset=demo").data.ratio_pool == "all"  # the demo keeps its earlier subsets


def test_ratio_pool_errors_name_the_field():
    cfg = brats.get_config("preset=paper,ratio=0.2").data
    cfg.ratio_pool = "gaze_only"
    with pytest.raises(ValueError, match="data.ratio_pool"):
        brats_pipeline.build_splits(_records(), cfg)
    cfg.ratio_pool = "preferred"
    no_gaze = [types.SimpleNamespace(case_id=r.case_id, has_seg=True, has_gaze=False) for r in _records()]
    with pytest.raises(ValueError, match="data.ratio_pool='preferred'"):
        brats_pipeline.build_splits(no_gaze, cfg)


# ---------------------------------------------------------------------------------------------- 3. AAB width


def test_paper_preset_aab_qkv_width_is_c_h_64():
    cfg = brats.get_config("preset=paper,method=ours")
    model = san_aab.build_model(cfg)
    x = jax.ShapeDtypeStruct((1,) + tuple(cfg.data.crop_size) + (4,), jnp.float32)
    aab = jax.eval_shape(model.init, jax.random.key(0), x)["params"]["aab"]
    for name in ("query", "key", "value"):
        assert aab[name]["kernel"].shape[-1] == 64, name
    assert aab["out"]["kernel"].shape == (64, 8 * cfg.model.width)  # W^O: c_h -> E4's 384 channels
    assert cfg.model.aab_scale_dim == 64


@pytest.mark.slow
def test_aab_scale_dim_is_the_eq1_denominator():
    """softmax(Q K^T / sqrt(s)) with s = scale_dim equals per-head scaling with Q's projection times sqrt(d / s)."""
    rng = np.random.default_rng(0)
    e4 = rng.standard_normal((1, 4, 4, 4, 6)).astype(np.float32)
    m2 = rng.standard_normal((1, 2, 2, 2, 5)).astype(np.float32)
    literal, per_head = AAB(num_heads=2, head_dim=3, scale_dim=6), AAB(num_heads=2, head_dim=3)
    params = jax.tree.map(lambda a: (np.asarray(a) + 0.3 * rng.standard_normal(a.shape)).astype(np.float32),
                          literal.init(jax.random.key(0), e4, m2)["params"])
    factor = np.sqrt(3 / 6)
    rescaled = {**params, "query": {k: v * factor for k, v in params["query"].items()}}
    got = literal.apply({"params": params}, e4, m2)
    np.testing.assert_allclose(got, per_head.apply({"params": rescaled}, e4, m2), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, per_head.apply({"params": params}, e4, m2), atol=1e-3)


# ------------------------------------------------------------------------------------------ 5. evaluation mode


def _pointwise_predict(calls):
    def predict(x):
        calls.append(x.shape)
        b, d, h, w, _ = x.shape
        g = x[..., 3].reshape(b, d // 16, 16, h // 16, 16, w // 16, 16).mean(axis=(2, 4, 6))[..., None]
        return {"seg": x[..., :3], "gaze": g}
    return predict


def test_whole_mode_is_one_pass_over_the_brain_box_padded_to_16():
    image = np.random.default_rng(1).normal(size=(40, 37, 33, 4)).astype(np.float32)
    calls = []
    seg, gaze, frame = eval3d.infer_case(_pointwise_predict(calls), image, "whole", (32, 32, 32), 0.5, 2)
    assert calls == [(1, 48, 48, 48, 4)] and frame == (48, 48, 48) and gaze.shape == (3, 3, 3, 1)
    np.testing.assert_allclose(seg[:40, :37, :33], _sig(image[..., :3]), rtol=1e-5, atol=1e-6)
    calls.clear()
    eval3d.infer_case(_pointwise_predict(calls), image, "window", (32, 32, 32), 0.5, 2)
    assert len(calls) > 1 and all(c[1:4] == (32, 32, 32) for c in calls)


def test_eval_mode_presets_errors_and_report():
    paper, demo = brats.get_config("preset=paper"), brats.get_config("preset=demo")
    assert (paper.eval.mode, demo.eval.mode) == ("whole", "window")
    assert any("eval.mode=whole" in line for line in san_report.protocol_lines(paper))
    bad = brats.get_config("preset=demo")
    bad.eval.mode = "tiles"
    with pytest.raises(ValueError, match="eval.mode"):
        san_aab.evaluate(None, [], bad)
    paper.eval.window = (64, 64, 64)
    with pytest.raises(ValueError, match="eval.window"):
        san_aab.evaluate(None, [], paper)


# -------------------------------------------------------------------------------------------- 6. augmentation


def test_open_brats2020_augmentation_is_one_gated_block_with_one_transpose_and_one_flip():
    shape, point = (8, 8, 8), np.array([[1.0, 2.0, 4.0]])
    seg = np.zeros(shape, np.uint8)
    seg[1, 2, 4] = 1
    image = np.ones(shape + (2,), np.float32) * np.array([1.0, 2.0], np.float32)  # constant brain: no noise
    moves = {(a, b, f) for a in range(3) for b in range(a + 1, 3) for f in range(3)}
    gated = 0
    for seed in range(200):
        img, seg_out, pts = t3d.augment(image, seg, point, np.random.default_rng(seed), p=0.5, scheme="open_brats2020")
        np.testing.assert_array_equal(np.argwhere(seg_out)[0], pts[0])
        if np.array_equal(pts, point):
            np.testing.assert_array_equal(img, image)  # gate closed: nothing at all
            continue
        gated += 1
        ratio = img[..., 1] / img[..., 0]
        np.testing.assert_allclose(ratio, 2.0, rtol=1e-6)  # one scalar scale for every channel
        assert 0.9 <= img[0, 0, 0, 0] <= 1.1
        expected = set()
        for a, b, f in moves:  # swap axes a, b, then flip axis f
            q = point[0].copy()
            q[[a, b]] = q[[b, a]]
            q[f] = 7 - q[f]
            expected.add(tuple(q))
        assert tuple(pts[0]) in expected
    assert 70 <= gated <= 130  # p = 0.5 of 200 draws


def test_open_brats2020_noise_and_config():
    rng = np.random.default_rng(0)
    high = (np.indices((24, 24, 24)).sum(0) % 2).astype(np.uint8)
    image = np.where(high, 3.0, 1.0).astype(np.float32)[..., None]
    out, seg, _ = t3d.augment(image, high, None, rng, p=1.0, scheme="open_brats2020")
    low = out[..., 0][seg == 0]
    scale = low.mean()
    std = np.std(np.where(high, 3.0, 1.0) * scale, ddof=1)  # std of the scaled brain (all voxels > 0)
    np.testing.assert_allclose(low.std(), 0.1 * std, rtol=0.06)
    with pytest.raises(ValueError, match="equal sides"):
        t3d.augment(np.ones((4, 5, 6, 1), np.float32), None, None, np.random.default_rng(0), p=1.0,
                    scheme="open_brats2020")
    assert brats.get_config("preset=paper").data.augment == "open_brats2020"
    assert brats.get_config("preset=demo").data.augment == "per_step"
