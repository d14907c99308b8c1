"""SAN + AAB for 5-finding chest X-ray classification (Huang et al., BMVC 2021, Sec. 4.2, Table 4) and the
table's baselines, declared for the one trainer.

Model: `gazejax.models.classifier2d.SANAABClassifier` on `[B, H, W, 1]` radiographs, 5 sigmoid outputs
(Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion); its docstring says where the AAB sits and
what it costs in parameters. Methods (`config.method`, Table 4's rows):
- "backbone": the encoder + GAP + linear head; L = w1 L_cls. Gaze is never read.
- "ours": SAN + AAB; L = w1 L_cls + w2 L_g, L_g = Eq. 4 (BCE) on SAN's gaze logits at the 1/16 grid.
- "gaze_star" (+gaze*): a 1x1 gaze head on E4 (1/32) trained with Eq. 4; at inference the predicted gaze weights
  the pooling (soft attention).
- "gaze_loss" (+gaze loss): the same head trained with the KL saliency loss of the gaze-enhanced classifier the
  paper borrows it from; it never enters the classification path.
- "backbone_matched" (not in the paper): the "ours" network (SAN + AAB, the same parameters) with L = w1 L_cls
  only, gaze never read: a backbone row with ours' exact parameter count, so that Table 4 separates what gaze
  adds from what the AAB's extra parameters add.
L_cls is the multi-label sigmoid BCE over known labels ("we apply the typical cross-entropy loss to replace L_seg",
Sec. 3.3); w1 = config.loss.cls, w2 = config.loss.gaze (0.5 as in Sec. 4.1). With data.label_set "3class" (not in
the paper: EGD-CXR's Normal / CHF / pneumonia, for the cross-method leaderboard) the head has 3 outputs and L_cls is
the softmax cross-entropy of the one class per image; AUROC is then the macro one-vs-rest AUROC of the softmax.
Data: `gazejax.data.cxr.pipeline` with label_set "5label"; gaze targets `gaze_san` (1/16) and `gaze_e4` (1/32),
Gaussians on the fixations divided by their max (Eq. 4 needs targets in [0, 1]). `make_data` refuses a config whose
grid for the method is not image_size / gaze_stride(method).
Evaluation: per-class AUROC and their mean (`multilabel_auroc`), the losses, and for the gaze variants the CC and
KL of the predicted gaze against the target on images with gaze. Report: `gazejax.methods.cxr_san.report`.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit, log_expit, softmax

from gazejax import losses, models
from gazejax.data.cxr import labels as cxr_labels
from gazejax.metrics import classification as cls
from gazejax.metrics import saliency
from gazejax.engine.api import DataBundle, Stage, iterate_in_batches
from gazejax.models import classifier2d
from gazejax.models.classifier2d import E4_STRIDE, SANAABClassifier
from gazejax.models.cam import backbone_family

log = logging.getLogger("gazejax")

FINDINGS = cxr_labels.FIVE_LABEL  # Table 4's findings: Atelectasis, Cardiomegaly, Consolidation, Edema, Pl. Effusion


def slug(name: str) -> str:
    """"Pleural Effusion" -> "Pleural_Effusion": an output's name in metric and column names."""
    return name.replace(" ", "_")


SLUGS = tuple(slug(f) for f in FINDINGS)


def label_names(config) -> tuple[str, ...]:
    """The model's outputs: Table 4's five findings (multi-label sigmoids) for data.label_set "5label" (the paper),
    EGD-CXR's Normal / CHF / pneumonia (one softmax) for "3class" (the cross-method leaderboard)."""
    return tuple(cxr_labels.label_names(config.data.label_set))


def is_multiclass(config) -> bool:
    """True for the single-label 3-class task: softmax cross-entropy ("the typical cross-entropy loss", Sec. 3.3,
    for one class per image) instead of the multi-label sigmoid BCE."""
    return config.data.label_set == "3class"


def probabilities(logits: np.ndarray, config) -> np.ndarray:
    """float64 class probabilities of `[N, K]` logits: a softmax for the 3-class task, per-finding sigmoids else."""
    logits = np.asarray(logits, np.float64)
    return softmax(logits, axis=-1) if is_multiclass(config) else expit(logits)


GRID_NAMES = {16: "san", E4_STRIDE: "e4"}  # gaze stride -> name of its data.gaze_grids entry
EVAL_KEYS = ("image", "label", "label_mask", "has_gaze", "gaze_san", "gaze_e4")


MODEL_METHODS = {"backbone_matched": "ours"}  # config.method -> the SANAABClassifier method it trains
METHODS = (*classifier2d.METHODS, *MODEL_METHODS)


def model_method(method: str) -> str:
    """The `SANAABClassifier.method` a config method builds ("backbone_matched" -> "ours")."""
    if method not in METHODS:
        raise ValueError(f"cxr_san: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return MODEL_METHODS.get(method, method)


def gaze_stride(method: str) -> int | None:
    """Input pixels per cell of the gaze target a method trains with; None when it reads no gaze (backbone,
    backbone_matched)."""
    return None if method in MODEL_METHODS else classifier2d.gaze_stride(model_method(method))


def metric_key(finding: str) -> str:
    """"Pleural Effusion" -> "auroc_Pleural_Effusion" (metric names without spaces)."""
    return "auroc_" + slug(finding)


def _backbone_kwargs(config) -> dict[str, Any]:
    m, family = config.model, backbone_family(config.model.backbone)
    kwargs: dict[str, Any] = {"in_channels": 1}
    if config.get("remat", False):  # per-block rematerialisation (engine field)
        if family not in ("efficientnet", "resnet"):
            raise ValueError(f"cxr_san: remat=True is supported for EfficientNet and ResNet backbones, "
                             f"not {m.backbone!r}")
        kwargs["remat"] = True
    if family == "efficientnet":
        kwargs.update(width_mult=float(m.efficientnet_width_mult), depth_mult=float(m.efficientnet_depth_mult))
    elif family == "mobilenet":
        kwargs.update(width_mult=float(m.mobilenet_width_mult))
    elif family == "resnet":
        kwargs.update(width=int(m.resnet_width))
    return kwargs


def build_model(config) -> SANAABClassifier:  # registered as "san_aab_classifier"
    m = config.model
    return models.build("san_aab_classifier", backbone=m.backbone, num_classes=len(label_names(config)),
                            method=model_method(config.method), san_width=int(m.san_width), aab_heads=int(m.aab_heads), aab_head_dim=int(m.aab_head_dim),
                            aab_ffn_mult=int(m.aab_ffn_mult), aab_site=str(m.get("aab_site", "stride32")),
                            backbone_kwargs=_backbone_kwargs(config),
                            dropout=None if m.dropout < 0 else float(m.dropout),
                            gaze_head_std=float(m.get("gaze_head_std", 0.01)), dtype=jnp.dtype(m.dtype),
                            conv_impl=str(m.get("conv_impl", "auto")))


def init_batch(config) -> dict[str, np.ndarray]:
    return {"image": np.zeros((1, *config.data.image_size, 1), np.float32)}


def param_counts(config) -> dict[str, int]:
    """Parameters per top-level group ("backbone", "classifier", "san", "aab", "gaze_head") and "total"
    (shapes only, `jax.eval_shape`)."""
    model = build_model(config)
    x = jax.ShapeDtypeStruct(init_batch(config)["image"].shape, jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)["params"]
    counts = {k: sum(int(np.prod(p.shape)) for p in jax.tree.leaves(v)) for k, v in params.items()}
    return {**counts, "total": sum(counts.values())}


def gaze_target_key(method: str) -> str | None:
    """The batch key of the gaze target a method trains with: "gaze_san" (ours), "gaze_e4" (gaze_star,
    gaze_loss), None (backbone, backbone_matched)."""
    stride = gaze_stride(method)
    return None if stride is None else f"gaze_{GRID_NAMES[stride]}"


def loss_fn(outputs: dict, batch: dict, params: Any, config, stage=None) -> tuple[jnp.ndarray, dict]:
    """L = w1 BCE(logits, labels) (softmax CE on the 3-class task) (+ w2 L_g on the method's gaze output and grid;
    see the module docstring)."""
    del params, stage
    w = config.loss
    if is_multiclass(config):
        bce, name = losses.softmax_ce(outputs["logits"], batch["label"], batch["label_mask"]), "loss_ce"
    else:
        bce, name = losses.sigmoid_bce_multilabel(outputs["logits"], batch["label"], batch["label_mask"]), "loss_bce"
    key = gaze_target_key(config.method)
    if key is None:
        return w.cls * bce, {name: bce}
    if config.method == "gaze_loss":  # the gaze-enhanced classifier's KL(gaze density || softmax(gaze logits))
        gaze = losses.kl_saliency(outputs["gaze"], batch[key], batch["has_gaze"])
    else:  # Eq. 4, Huang et al.
        gaze = losses.gaze_bce(outputs["gaze"], batch[key], batch["has_gaze"])
    return w.cls * bce + w.gaze * gaze, {name: bce, "loss_gaze": gaze}


def check_gaze_grid(config) -> None:
    """ValueError unless `data.gaze_grids` holds the method's grid at image_size / gaze_stride(method)."""
    stride, size = gaze_stride(config.method), tuple(int(s) for s in config.data.image_size)
    if stride is None:
        return
    if any(s % E4_STRIDE for s in size):
        raise ValueError(f"cxr_san: data.image_size {size} must be multiples of {E4_STRIDE} for method "
                         f"{config.method!r}")
    name, expected = GRID_NAMES[stride], tuple(s // stride for s in size)
    grids = dict(config.data.gaze_grids)
    got = tuple(int(g) for g in grids[name]) if name in grids else None
    if got != expected:
        raise ValueError(f"cxr_san: method {config.method!r} trains its gaze output at stride {stride}: "
                         f"data.gaze_grids[{name!r}] must be image_size / {stride} = {expected}, got {got}")


def gaze_sigma(config) -> float | str:
    """data.gaze_sigma in source pixels of the data used: a number is in EGD-CXR DICOM pixels and is scaled by
    synthetic height / 3056 for the synthetic set (same share of the image); "dataset" (REFLACX: 1 degree of
    visual angle per fixation) passes through."""
    from gazejax.data.cxr import pipeline as cxr_pipeline

    sigma = config.data.gaze_sigma
    return sigma if isinstance(sigma, str) else cxr_pipeline.source_pixels(config, sigma)


def needs_gaze(config) -> bool:
    """Whether the row trains on gaze (every Table 4 row but the backbones)."""
    return gaze_target_key(config.method) is not None


def make_data(config, process_index: int = 0, process_count: int = 1) -> DataBundle:
    from gazejax.data.cxr import pipeline as cxr_pipeline

    if config.data.label_set not in cxr_labels.LABEL_SETS:
        raise ValueError(f"cxr_san: data.label_set must be '5label' (Table 4's findings) or '3class' (EGD-CXR's "
                         f"classes, softmax), got {config.data.label_set!r}")
    check_gaze_grid(config)
    sigma = gaze_sigma(config)
    log.info("SAN+AAB CXR gaze targets: sigma %s source px, grids %s", sigma, dict(config.data.gaze_grids))
    return DataBundle(**cxr_pipeline.parts_with_gaze_sigma(config, sigma, process_index, process_count,
                                                          needs_gaze=needs_gaze(config)))


# ---- evaluation --------------------------------------------------------------------------------------------------
def auroc_metrics(targets: np.ndarray, probs: np.ndarray, known: np.ndarray, names: tuple[str, ...] = FINDINGS
                  ) -> dict[str, float]:
    """"auroc" (mean over findings with both label values) and "auroc_<finding>" from `[N, K]` 0/1 targets,
    scores and the known-label mask; each finding is scored on its known labels only (for the 3-class task, with
    one-hot targets and softmax scores, the macro one-vs-rest AUROC)."""
    per_class = []
    with warnings.catch_warnings():  # a finding without positives in a small split is NaN, reported as such
        warnings.simplefilter("ignore", RuntimeWarning)
        for c in range(targets.shape[1]):
            rows = known[:, c].astype(bool)
            per_class.append(cls.multilabel_auroc(targets[rows, c:c + 1], probs[rows, c:c + 1])["per_class"][0])
    finite = [a for a in per_class if np.isfinite(a)]
    return {"auroc": float(np.mean(finite)) if finite else float("nan"),
            **{metric_key(f): float(a) for f, a in zip(names, per_class)}}


def gaze_map(gaze_logits: np.ndarray, method: str) -> np.ndarray:
    """Predicted gaze `[B, h, w, 1]` logits -> maps `[B, h, w]`: sigmoid for the Eq. 4 variants, a softmax over the
    grid for gaze_loss (the distribution its KL loss trains)."""
    g = np.asarray(gaze_logits, np.float64)[..., 0]
    if method == "gaze_loss":
        return softmax(g.reshape(len(g), -1), axis=1).reshape(g.shape)
    return expit(g)


def gaze_metrics(pred: np.ndarray, target: np.ndarray, has_gaze: np.ndarray) -> dict[str, float]:
    """Mean CC and KL (MIT saliency benchmark) of predicted vs target gaze maps over images with gaze."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ccs = [saliency.cc(p, t) for p, t, h in zip(pred, target[..., 0], has_gaze) if h]
        kls = [saliency.kl_div(p, t) for p, t, h in zip(pred, target[..., 0], has_gaze) if h]
    mean = lambda v: float(np.nanmean(v)) if v and np.isfinite(v).any() else float("nan")  # noqa: E731
    return {"gaze_cc": mean(ccs), "gaze_kl": mean(kls)}


def _predict_padded(predict, images: np.ndarray, size: int) -> dict[str, np.ndarray | None]:
    """`predict` on `images` padded (repeating the last) to `size` rows, so that every call of every split has one
    shape and compiles once; outputs cut back to the real rows."""
    n = len(images)
    if n < size:
        images = np.concatenate([images, np.repeat(images[-1:], size - n, axis=0)])
    return {k: None if v is None else np.asarray(v)[:n] for k, v in predict(images).items()}


def _predict_split(predict, split, config, n_figures: int) -> dict[str, Any]:
    """Runs the model over an EvalSplit: stacked logits, gaze logits, labels and targets, plus the first
    `n_figures` images with gaze as figure examples (image, target and predicted gaze maps)."""
    parts: dict[str, list] = {"logits": [], "gaze": []}
    figures, key = [], gaze_target_key(config.method)
    for idx in iterate_in_batches(range(len(split)), int(config.eval.batch)):
        examples = [split.examples[i] for i in idx]
        batch = {k: np.stack([ex[k] for ex in examples]) for k in EVAL_KEYS if k in examples[0]}
        images = batch.pop("image")
        out = _predict_padded(predict, images, int(config.eval.batch))
        parts["logits"].append(np.asarray(out["logits"], np.float32))
        if out.get("gaze") is not None:
            parts["gaze"].append(np.asarray(out["gaze"], np.float32))
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
        for j, i in enumerate(idx):
            if key and len(figures) < n_figures and batch["has_gaze"][j]:
                figures.append({"dicom_id": split.records[i].dicom_id, "image": images[j, ..., 0],
                                "target": batch[key][j, ..., 0],
                                "pred": gaze_map(out["gaze"][j:j + 1], config.method)[0],
                                "label": batch["label"][j], "probs": probabilities(out["logits"][j], config)})
    return {**{k: np.concatenate(v) for k, v in parts.items() if v}, "figures": figures}


def evaluate(predict, split, config, out_dir: str | None = None, stage=None) -> dict:
    """Metrics of one EvalSplit (module docstring); `out_dir` (the final test evaluation) also gets
    predictions.csv and keeps `eval.figure_images` gaze examples for the report."""
    del stage
    if split is None or len(split) == 0:
        return {"metrics": {}}
    run = _predict_split(predict, split, config, int(config.eval.figure_images) if out_dir else 0)
    names = label_names(config)
    targets, known = run["label"].astype(np.float32), run["label_mask"].astype(bool)
    if is_multiclass(config):  # int classes -> one-hot targets, one mask per image -> per class
        targets = np.eye(len(names), dtype=np.float32)[run["label"].astype(int)]
        known = np.repeat(known[:, None], len(names), axis=1)
    probs = probabilities(run["logits"], config)
    metrics = auroc_metrics(targets, probs, known, names)
    outputs = {"logits": jnp.asarray(run["logits"]), "gaze": jnp.asarray(run["gaze"]) if "gaze" in run else None}
    total, terms = loss_fn(outputs, {k: jnp.asarray(v) for k, v in run.items() if k != "figures"}, None, config)
    metrics.update(loss=float(total), **{k: float(v) for k, v in terms.items()})
    key = gaze_target_key(config.method)
    if key is not None:
        metrics.update(gaze_metrics(gaze_map(run["gaze"], config.method), run[key], run["has_gaze"]))
    if is_multiclass(config):  # per image: -log p of the true class
        per_label = -np.log(np.maximum(probs, 1e-300)) * targets
        case_loss = np.where(known[:, 0], per_label.sum(1), np.nan)
    else:  # per image: the mean BCE over its known labels
        per_label = -(targets * log_expit(run["logits"]) + (1 - targets) * log_expit(-run["logits"]))
        case_loss = np.array([np.mean(b[k]) if k.any() else np.nan for b, k in zip(per_label, known)])
    slugs = [slug(n) for n in names]
    cases = [{"case_id": r.dicom_id, "scores": {"bce": float(c), **{f"p_{n}": float(v) for n, v in zip(slugs, p)}}}
             for r, c, p in zip(split.records, case_loss, probs)]
    if out_dir is not None:
        _write_predictions(os.path.join(out_dir, "predictions.csv"), split.records, targets, known, probs, slugs)
    counts = {f: (int(np.sum(targets[known[:, c], c])), int(np.sum(known[:, c]))) for c, f in enumerate(names)}
    return {"metrics": metrics, "cases": cases, "figures": run["figures"], "positives": counts}


def _write_predictions(path: str, records, targets, known, probs, slugs=SLUGS) -> None:
    import csv

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dicom_id"] + [f"label_{n}" for n in slugs] + [f"p_{n}" for n in slugs])
        for r, t, k, p in zip(records, targets, known, probs):
            writer.writerow([r.dicom_id] + [int(v) if m else "" for v, m in zip(t, k)] + [f"{v:.6f}" for v in p])


def stages(config) -> list[Stage]:
    return [Stage(name="train", epochs=int(config.epochs), monitor=config.monitor, monitor_mode="max")]
