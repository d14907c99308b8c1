"""The GazAT method as data (configs/gazat.py + gazejax.methods.gazat*): config and grids, stages of the evaluation
protocol, SimCLR without any gaze path, Grad-CAM = ReLU(cam), the momentum target and queue, the evaluation's
metrics against scikit-learn and hand-made maps, and a tiny end-to-end run through the trainer."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from configs import gazat as gazat_config
from gazejax.data import views
from gazejax.experiments.runner import apply_overrides
from gazejax.methods.gazat import spec as gazat, evaluate as gazat_eval
from gazejax.metrics import classification as cls
from gazejax.metrics import localization, saliency


TINY_VIT = {"patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 16}


def _tiny(method: str, size: int = 32, backbone: str = "resnet18", **overrides):
    """A tiny config: ResNet-18 of width 2 or a 3-layer ViT (patch 8, a 4x4 grid at 32 px), fast to compile."""
    c = gazat_config.get_config(f"method={method}")
    c.model.backbone = backbone
    c.model.resnet_width = 2
    c.model.vit = TINY_VIT
    c.model.region_layer = ""
    c.model.proj_hidden, c.model.proj_dim, c.model.predictor_hidden = 8, 4, 8
    c.data.image_size = (size, size)
    c.batch_size, c.moco.queue_size, c.moco.bn_groups, c.byol.total_steps = 4, 8, 2, 100  # no data needed
    return apply_overrides(c, overrides)


def _variables(model, config):
    """Jitted init with the rbg generator (eager threefry init of a ResNet takes tens of seconds on a busy CPU)."""
    batch = gazat.init_batch(config)
    return jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), *gazat.model_inputs(batch), train=False))()


@functools.lru_cache(maxsize=None)
def _built(method: str, backbone: str = "resnet18", **overrides):
    c = _tiny(method, backbone=backbone, **overrides)
    model = gazat.build_model(c)
    return c, model, _variables(model, c)


# ---------------------------------------------------------------------------------------------------- config
def test_config_parses_arguments_presets_and_rejects_bad_ones():
    c = gazat_config.get_config("preset=paper,method=byol,backbone=vit_b_16,dataset=egd_cxr,seed=2")
    assert (c.method, c.model.backbone, c.data.dataset, c.seed, c.batch_size) == ("byol", "vit_b_16", "egd_cxr", 2,
                                                                                  128)
    assert (c.pretrain_epochs, c.optim.name, c.optim.lr, c.model.proj_dim) == (200, "adamw", 1e-4, 256)
    assert c.data.label_set == "3class" and gazat_config.get_config().data.label_set == "5label"
    for bad in ("method=dino", "backbone=resnet18", "preset=huge", "dataset=brats"):
        with pytest.raises(ValueError):
            gazat_config.get_config(bad)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["preset=demo", "preset=paper", "preset=demo,backbone=vit_b_16",
                                 "preset=paper,backbone=vit_b_16"])
def test_models_build_with_attention_at_the_layer_grids(arg):
    c = gazat_config.get_config(arg)
    model, batch = gazat.build_model(c), gazat.init_batch(c)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *gazat.model_inputs(batch), train=False))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, batch["view_a"])
    for layer in gazat.attention_layers(c):
        assert out["attention"][layer].shape == (1, *gazat.layer_grid(c, layer))
    assert out["logits"].shape == (1, 5) and len(gazat.attention_layers(c)) == 3


def test_grids_cover_the_baselines_and_the_ablations():
    base = gazat_config.get_config()
    compare = gazat_config.get_grid("compare")
    assert set(cell["method"] for cell in compare["cells"]) == set(gazat_config.METHODS)
    ablation = gazat_config.get_grid("ablation")
    keys = {k for cell in ablation["cells"] for k in cell}
    assert {"loss.alpha", "loss.beta", "gaze.max_readers", "gaze.kind", "gaze.aggregate", "model.backbone",
            "loss.layer_weights"} <= keys
    for cell in compare["cells"] + ablation["cells"]:
        c = apply_overrides(base, cell)
        gazat.layer_weights(c), gazat.stages(c), gazat.view_config(c) if c.method != "supervised" else None
    assert all(t["split"].startswith("test@") for t in ablation["tables"])
    with pytest.raises(ValueError):
        gazat_config.get_grid("nope")


def test_stages_follow_the_evaluation_protocol():
    c = gazat_config.get_config()
    st = gazat.stages(c)
    subsets = [f"{p}pct_d{k}" for p in (1, 10) for k in range(3)]
    assert [s.name for s in st] == ["pretrain"] + [f"finetune_{n}" for n in subsets]
    assert all(s.evaluate for s in st) and st[0].options["task"] == "pretrain"
    assert [(s.train_set, s.init_from) for s in st[1:]] == [(f"label_{n}", "pretrain") for n in subsets]
    assert st[1].trainable == gazat.FINETUNE_TRAINABLE
    sup = gazat.stages(gazat_config.get_config("method=supervised"))
    assert [(s.name, s.train_set, s.init_from, s.options["task"]) for s in sup] == [
        ("supervised", "train", "init", "finetune")]


# ---------------------------------------------------------------------------------------------------- losses
def _examples(n: int = 4, size: int = 32) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pts = rng.uniform(2, size - 3, (5, 2)).astype(np.float32)
        out.append({"image": rng.uniform(0, 1, (size, size, 1)).astype(np.float32), "fixations": pts,
                    "fixation_weights": rng.uniform(0.1, 1, 5).astype(np.float32),
                    "fixation_sigma": np.full((5, 2), 3.0, np.float32), "fixation_valid": np.ones(5, bool),
                    "fixation_reader": np.zeros(5, np.int32), "reader_weights": np.ones(1, np.float32),
                    "has_gaze": np.asarray(True), "label": (rng.uniform(size=5) > 0.5).astype(np.float32),
                    "label_mask": np.ones(5, bool)})
    return out


def _loss_fn(config, model):
    """Jitted (variables, batch) -> pretraining loss of a training-mode forward pass."""

    def loss(variables, batch):
        rest = {k: v for k, v in variables.items() if k != "params"}
        out, _ = model.apply(variables, *gazat.model_inputs(batch), train=True, mutable=list(rest))
        return gazat.loss_fn(out, batch, variables["params"], config)[0]

    return jax.jit(loss)


def _batch(config, examples) -> dict:
    cfg = gazat.view_config(config)
    items = [views.make_views(ex, np.random.default_rng(i), cfg) for i, ex in enumerate(examples)]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


@pytest.mark.slow
def test_simclr_has_no_gaze_path_while_gazat_does():
    examples = _examples()
    shuffled = [dict(ex) for ex in examples]
    for ex, other in zip(shuffled, examples[1:] + examples[:1]):  # every image gets another image's gaze
        ex.update({k: other[k] for k in ("fixations", "fixation_weights")})
    for method, gaze_matters in (("simclr", False), ("gazat", True)):
        c, model, variables = _built(method, "vit_b_16")
        loss = _loss_fn(c, model)
        batch, batch_shuffled = _batch(c, examples), _batch(c, shuffled)
        value, value_shuffled = float(loss(variables, batch)), float(loss(variables, batch_shuffled))
        assert np.isfinite(value)
        assert (abs(value - value_shuffled) > 1e-6) == gaze_matters, method
        if method == "simclr":
            assert not any(k.startswith(("attn_", "gaze_")) for k in batch)
            for key in batch:
                np.testing.assert_array_equal(batch[key], batch_shuffled[key])


@pytest.mark.slow
def test_cam_is_grad_cam_of_the_classifier():
    c, model, variables = _built("moco", **{"moco.momentum": 0.9})  # any CNN with its head; shared below
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 32, 1)), jnp.float32)
    out, inter = jax.jit(lambda v, y: model.apply(v, y, train=False, capture_intermediates=True,
                                                  mutable=["intermediates"]))(variables, x)
    f4 = inter["intermediates"]["online"]["backbone"]["__call__"][0]["features"]["layer4"]
    head = variables["params"]["classifier"]

    def logit(feats, k):
        return (jnp.mean(feats, axis=(1, 2)) @ head["kernel"] + head["bias"])[:, k].sum()

    for k in range(3):
        weights = jnp.mean(jax.grad(logit)(f4, k), axis=(1, 2))  # Grad-CAM: position-averaged gradients
        grad_cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", f4, weights))
        hw = f4.shape[1] * f4.shape[2]
        np.testing.assert_allclose(jax.nn.relu(out["cam"][..., k]) / hw, grad_cam, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_momentum_target_and_queue_advance_once_per_training_call():
    c, model, variables = _built("moco", **{"moco.momentum": 0.9})
    online = variables["params"]["online"]
    jax.tree.map(np.testing.assert_array_equal, variables["target"]["params"], online)
    moved = jax.tree.map(lambda p: p + 1.0, variables["params"])  # as after an optimiser step
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 32, 32, 1)), jnp.float32)
    rest = {k: v for k, v in variables.items() if k != "params"}
    apply = jax.jit(lambda v, a, b: model.apply(v, a, b, train=True, mutable=list(rest)))
    out, new = apply({"params": moved, **rest}, x, x[::-1])
    jax.tree.map(lambda t, o, m: np.testing.assert_allclose(t, 0.9 * o + 0.1 * m, rtol=1e-5, atol=1e-6),
                 new["target"]["params"], online, moved["online"])
    np.testing.assert_array_equal(out["queue"], rest["queue"]["keys"])  # the loss sees the queue before enqueue
    assert int(new["queue"]["ptr"]) == 4
    zt = np.asarray(out["zt_g"])
    np.testing.assert_allclose(new["queue"]["keys"][:4], zt / np.linalg.norm(zt, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(new["queue"]["keys"][4:], rest["queue"]["keys"][4:])
    assert "queue" not in jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)  # evaluation


# ---------------------------------------------------------------------------------------------------- evaluation
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=(30, 3)) > 0.5).astype(float)
    p = np.clip(0.4 * y + 0.6 * rng.uniform(size=(30, 3)), 0, 1)
    y[:4, 0] = np.nan
    m = cls.summary(y, p, ("a", "b", "c"))
    known = np.isfinite(y[:, 0])
    aucs = [roc_auc_score(y[known, 0], p[known, 0])] + [roc_auc_score(y[:, k], p[:, k]) for k in (1, 2)]
    assert m["auroc"] == pytest.approx(np.mean(aucs)) and m["auroc_a"] == pytest.approx(aucs[0])
    f1s = [f1_score(y[known, 0], p[known, 0] >= 0.5)] + [f1_score(y[:, k], p[:, k] >= 0.5) for k in (1, 2)]
    assert m["f1"] == pytest.approx(np.mean(f1s))
    classes = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    m = cls.summary(classes, probs, ("x", "y", "z"))
    assert m["auroc"] == pytest.approx(roc_auc_score(classes, probs, multi_class="ovr"))
    assert m["f1"] == pytest.approx(f1_score(classes, probs.argmax(1), average="macro"))


def test_alignment_scores_and_pointing_game_hit_rule():
    grid, shape = (4, 4), (32, 32)
    fixated = np.zeros(grid, bool)
    fixated[1, 2] = fixated[3, 3] = True
    gmap = np.random.default_rng(4).uniform(size=grid)
    region = np.zeros(shape, bool)
    region[8:16, 16:24] = True  # cell (1, 2): centre (11.5, 19.5) inside
    from scipy import ndimage
    truth = [{"map": gmap, "fixated": fixated, "distance": ndimage.distance_transform_edt(~region)}] * 2 + [None]
    hit, miss = np.zeros(grid), np.zeros(grid)
    hit[1, 2], miss[3, 0] = 1.0, 1.0
    hit[0, 0] = miss[0, 1] = 0.5
    metrics, per = gazat_eval.alignment(np.stack([hit, miss, hit]), truth, 0.0, "attn_")
    assert per[0]["attn_pointing"] == 1.0 and per[1]["attn_pointing"] == 0.0 and per[2] == {}
    assert metrics["attn_pointing"] == 0.5 and metrics["attn_pointing_n"] == 2
    assert metrics["attn_nss"] == pytest.approx(np.mean([saliency.nss(hit, fixated), saliency.nss(miss, fixated)]))
    assert per[1]["attn_cc"] == pytest.approx(saliency.cc(miss, gmap))
    # the miss's peak cell (3, 0) has its centre at pixel (27.5, 3.5) -> (28, 4), 17.7 px from the region
    assert truth[0]["distance"][28, 4] == pytest.approx(np.hypot(28 - 15, 16 - 4))
    near, _ = gazat_eval.alignment(miss[None], truth[:1], 18.0, "x_")
    far, _ = gazat_eval.alignment(miss[None], truth[:1], 17.0, "x_")
    assert near["x_pointing"] == 1.0 and far["x_pointing"] == 0.0
    # the peak is taken on the peak map's own grid: a 2x2 map peaked top-right points at its cell centre, pixel
    # (7.5, 23.5) -> (8, 24), 1 px from the region; the argmax of its bilinear upsampling is the corner cell (0, 3)
    coarse = np.array([[[0.0, 1.0], [0.2, 0.1]]])
    upsampled = gazat_eval.resize_maps(coarse, grid)
    assert np.unravel_index(np.argmax(upsampled[0]), grid) == (0, 3)
    native, _ = gazat_eval.alignment(upsampled, truth[:1], 1.0, "c_", coarse)
    flat, _ = gazat_eval.alignment(upsampled, truth[:1], 1.0, "c_")
    assert native["c_pointing"] == 1.0 and flat["c_pointing"] == 0.0
    assert localization.pointing_hit(np.zeros((2, 2)), truth[0]["distance"], 1e9) == 0.0  # constant map: a miss


# ---------------------------------------------------------------------------------------------------- end to end


# ---------------------------------------------------------------------------------------------------- data
def test_finding_boxes_follow_the_resize_and_label_subsets_tile_to_a_batch():
    import types

    from gazejax.data.cxr.labels import CXRRecord, Fixations
    from gazejax.data.geometry import ResizeTransform
    from gazejax.methods.gazat import data as gazat_data

    box = np.array([[10.0, 20.0, 30.0, 60.0]])  # (xmin, ymin, xmax, ymax); two labels share the ellipse
    boxes = {"ellipse/Edema": box, "ellipse/Mass": box, "chest": np.array([[0.0, 0.0, 49.0, 99.0]])}
    record = CXRRecord("d", "p", "s", "", {}, Fixations.empty(), boxes=boxes)
    case = types.SimpleNamespace(source_shape=(100, 50), image_shape=(64, 64))
    got = gazat_data.finding_boxes(record, case)
    corners = ResizeTransform.fit((100, 50), (64, 64)).map_points(np.array([[10.0, 20.0], [30.0, 60.0]]))  # (x, y)
    np.testing.assert_allclose(got, [[corners[0, 1], corners[0, 0], corners[1, 1], corners[1, 0]]], rtol=1e-5)
    assert gazat_data.finding_boxes(CXRRecord("d", "p", "s", "", {}, Fixations.empty()), case).shape == (0, 4)
    items = [types.SimpleNamespace(case=types.SimpleNamespace(label=np.int32(i % 3), patient_id=str(i)))
             for i in range(90)]
    subset = gazat_data.label_subset(items, 0.1, seed=0, min_size=32)
    distinct = {id(it) for it in subset}
    assert len(distinct) == 9 and len(subset) == 36 and len(subset) >= 32
    assert sorted(int(it.case.label) for it in {id(it): it for it in subset}.values()) == [0] * 3 + [1] * 3 + [2] * 3
    # every patient holds 2 images and 1 % of 8 asks for 1: the smallest patient's 2 (was a ZeroDivisionError)
    pairs = [types.SimpleNamespace(case=types.SimpleNamespace(label=np.int32(i % 3), patient_id=str(i // 2)))
             for i in range(8)]
    subset = gazat_data.label_subset(pairs, 0.01, seed=0, min_size=4)
    assert len({id(it) for it in subset}) == 2 and len({it.case.patient_id for it in subset}) == 1
    assert len(subset) == 4


def test_tsne_keeps_separated_clusters_apart_and_matches_the_perplexity():
    from gazejax.analysis.tsne import conditional_probabilities, tsne

    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 30)
    x = rng.normal(0, 10, (3, 20))[labels] + rng.normal(0, 1, (90, 20))
    p = conditional_probabilities(x, 10.0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    np.testing.assert_allclose(np.exp(entropy), 10.0, rtol=1e-3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-9)
    y = tsne(x, perplexity=10.0, iterations=300)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).all()  # every point's nearest neighbour is in its own cluster
