"""GG-CAM (Zhu et al.): a CAM layer in place of GAP + linear, whose true-class map Omega^Y is pulled toward the
expert's gaze heat map Psi by a selective MSE, weighted against the cross-entropy by Eq. 11; 3-class chest X-ray
classification (Normal, CHF, pneumonia) on EGD-CXR; plus "plain", the same backbone with its linear head (CE only),
the paper's "standard" network for the ANOVA comparison (Fig. 3).

Model: `gazejax.models.cam.GGCAMModel` (ggcam: backbone + CAM layer + log alpha, log sigma_sm, log sigma_ce, i.e.
exactly 3 parameters more than plain) or `gazejax.models.cam.LinearHeadClassifier` (plain), both on `[B, H, W, 1]` images.
Loss: ggcam L = L_sm / (2 sigma_sm^2) + L_ce / sigma_ce^2 + ln(sigma_sm + 1) + ln(sigma_ce + 1) (Eq. 11) with the
selective MSE L_sm (Eq. 9-10) on images with gaze; plain L = L_ce (Eq. 7).
Data: `gazejax.data.cxr.pipeline` (synthetic EGD-CXR by default), Psi by Algorithm 1 at the CAM grid (stride 32).
Evaluation: Hand & Till's one-vs-one AUROC ("auroc_ovo", the paper's multi-class AUC [13], which the Fig. 3 ANOVA
compares) and the one-vs-rest macro AUROC ("auroc"), per-class AUROC / precision / recall, accuracy, the validation
losses, and the interpretability of Eq. 12: the share of CHF images whose Omega^Y peak lies in the heart (EGD-CXR's
"mediastanum" mask) and of pneumonia images whose peak lies in the lungs (left | right lung). Normal images are
excluded: Eq. 12 defines no organ for them. The plain network's CAM is Eq. 4 of its linear head (the same map a CAM
layer with those weights computes), so both are scored alike.
Stages: one, at Table 1's Adam lr, with ReduceLROnPlateau(0.1, Table 1's P) and early stopping on the validation
loss, which also picks the best checkpoint (see `stages`).
"""
from __future__ import annotations

import csv
import logging
import math
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from scipy.special import softmax

from gazejax import losses, models
from gazejax.methods.ggcam import losses as ggcam_losses
from gazejax.engine.api import DataBundle, Stage, iterate_in_batches
from gazejax.data.cxr.labels import THREE_CLASS
from gazejax.metrics import classification as cls
from gazejax.metrics.localization import ORGANS, interpretability_hit, organ_masks
from gazejax.models.cam import backbone_family

log = logging.getLogger("gazejax")

CLASSES = THREE_CLASS  # ("Normal", "CHF", "pneumonia"): label indices 0, 1, 2 (data.cxr.labels "3class")
VARIANTS = ("ggcam", "plain")
CAM_STRIDE = 32  # every gazejax 2D CNN backbone's deepest map is at 1/32 of the input
EVAL_KEYS = ("image", "label", "label_mask", "has_gaze", "gaze_cam", "organ_masks", "has_organ_masks")


def table1_row(config, method: str | None = None):
    """The `config.table1` row of the current backbone family and method (e.g. "resnet_ggcam")."""
    key = f"{backbone_family(config.model.backbone)}_{method or config.method}"
    if key not in config.table1:
        raise ValueError(f"ggcam: config.table1 has no row {key!r} for backbone "
                         f"{config.model.backbone!r}; rows: {', '.join(sorted(config.table1))}")
    return config.table1[key]


def _backbone_kwargs(config) -> dict[str, Any]:
    m, family = config.model, backbone_family(config.model.backbone)
    common = {"in_channels": 1, "conv_impl": str(m.get("conv_impl", "auto"))}  # every backbone takes conv_impl
    if family == "resnet":
        return {**common, "width": int(m.resnet_width)}
    if family == "efficientnet":
        return {**common, "width_mult": float(m.efficientnet_width_mult),
                "depth_mult": float(m.efficientnet_depth_mult)}
    return common


def build_model(config) -> nn.Module:
    m = config.model
    if config.method not in VARIANTS:
        raise ValueError(f"ggcam: unknown method {config.method!r}; choose one of {', '.join(VARIANTS)}")
    kw = dict(backbone=m.backbone, num_classes=len(CLASSES), backbone_kwargs=_backbone_kwargs(config),
              dropout=None if m.dropout < 0 else float(m.dropout), dtype=jnp.dtype(m.dtype))
    if config.method == "plain":
        return models.build("linear_head_classifier", **kw)
    sigma_sm, sigma_ce = float(table1_row(config).sigma_sm), float(m.sigma_ce_init)
    row = f"{backbone_family(m.backbone)}_{config.method}"
    ggcam_losses.check_sigma_start(sigma_sm, sigma_ce, jnp.dtype(m.dtype),
                                   (f"table1.{row}.sigma_sm", "model.sigma_ce_init"), "ggcam config")
    return models.build("ggcam", **kw, sum_channels=bool(m.sum_channels), sigma_sm_init=sigma_sm,
                        sigma_ce_init=sigma_ce)


def init_batch(config) -> dict[str, np.ndarray]:
    return {"image": np.zeros((1, *config.data.image_size, 1), np.float32)}


def loss_fn(outputs: dict, batch: dict, params: Any, config, stage=None) -> tuple[jnp.ndarray, dict]:
    """plain: L_ce (Eq. 7). ggcam: Eq. 11 of L_ce and the selective MSE (Eq. 9-10) over images with gaze."""
    del params, stage
    labels, known = batch["label"], batch["label_mask"]
    ce = losses.softmax_ce(outputs["logits"], jnp.maximum(labels, 0), mask=known)
    if config.method == "plain":
        return ce, {"loss_ce": ce}
    has = jnp.logical_and(batch["has_gaze"], known)
    sm = ggcam_losses.selective_mse(outputs["cam"], jnp.maximum(labels, 0), batch["gaze_cam"],
                                     outputs["log_alpha"], has)
    total = ggcam_losses.ggcam_total(ce, sm, outputs["log_sigma_ce"], outputs["log_sigma_sm"])
    scalars = {k: jnp.exp(outputs[f"log_{k}"]) for k in ("alpha", "sigma_sm", "sigma_ce")}
    return total, {"loss_ce": ce, "loss_sm": sm, **scalars}


def cam_grid(image_size) -> tuple[int, int]:
    """The CAM grid (h, w) = image_size / 32; image sides must be multiples of 32."""
    if any(int(s) % CAM_STRIDE for s in image_size):
        raise ValueError(f"ggcam: data.image_size {tuple(image_size)} must be multiples of "
                         f"{CAM_STRIDE} so that Psi and the CAM share one grid")
    return tuple(int(s) // CAM_STRIDE for s in image_size)


def gaze_sigma(config) -> float:
    """Algorithm 1's blur B (Table 1, std in pixels of the original DICOM) in source pixels of the data used: as
    given for real data, scaled by synthetic height / 3056 for the synthetic set, so it covers the same share of
    the image."""
    blur = float(table1_row(config, "ggcam").blur)
    from gazejax.data.cxr import pipeline as cxr_pipeline

    return cxr_pipeline.source_pixels(config, blur)


def make_data(config, process_index: int = 0, process_count: int = 1) -> DataBundle:
    from gazejax.data.cxr import pipeline as cxr_pipeline

    grid, expected = tuple(config.data.gaze_grids["cam"]), cam_grid(config.data.image_size)
    if grid != expected:
        raise ValueError(f"ggcam: data.gaze_grids.cam {grid} must be the CAM grid image_size / 32 = "
                         f"{expected}")
    sigma = gaze_sigma(config)
    log.info("GG-CAM gaze maps: Algorithm 1 with B = %.1f source pixels at grid %s", sigma, grid)
    return DataBundle(**cxr_pipeline.parts_with_gaze_sigma(config, sigma, process_index, process_count,
                                                          needs_gaze=config.method == "ggcam"))


# ---- evaluation --------------------------------------------------------------------------------------------------
def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([ex[k] for ex in examples]) for k in EVAL_KEYS if k in examples[0]}


def _figure_examples(found: dict, batch: dict, out: dict, masks, defined, ids: list[str]) -> None:
    """Keeps the first test image of each class (with gaze when there is one) for the report's overlays."""
    for i, y in enumerate(np.asarray(batch["label"]).astype(int)):
        name = CLASSES[y]
        if name in found and (found[name]["has_gaze"] or not batch["has_gaze"][i]):
            continue
        found[name] = {"dicom_id": ids[i], "image": batch["image"][i, ..., 0], "gaze": batch["gaze_cam"][i, ..., 0],
                       "cam": out["cam"][i, ..., y], "organ": masks[i] if defined[i] else None,
                       "has_gaze": bool(batch["has_gaze"][i]), "probs": softmax(out["logits"][i].astype(np.float64))}


def _run_split(predict, split, config, keep_figures: bool) -> dict[str, Any]:
    """Predicts every image of an EvalSplit: probabilities, labels, Eq. 12 hits, summed losses, figure examples."""
    names = tuple(split.records[0].mask_names)
    probs, labels, hits, figures, out = [], [], [], {}, {}
    sums = {"ce": 0.0, "known": 0, "sm": 0.0, "gaze": 0}  # loss_fn's batch means, weighted back to sums
    for idx in iterate_in_batches(range(len(split)), int(config.eval.batch)):
        batch = _stack([split.examples[i] for i in idx])
        out = predict(batch["image"])
        probs.append(softmax(np.asarray(out["logits"], np.float64), axis=1))
        labels.append(np.asarray(batch["label"]).astype(int))
        _, terms = loss_fn(out, batch, None, config)
        n_known, n_gaze = int(np.sum(batch["label_mask"])), int(np.sum(batch["has_gaze"] & batch["label_mask"]))
        sums["ce"], sums["known"] = sums["ce"] + float(terms["loss_ce"]) * n_known, sums["known"] + n_known
        sums["sm"], sums["gaze"] = sums["sm"] + float(terms.get("loss_sm", 0.0)) * n_gaze, sums["gaze"] + n_gaze
        masks, defined = organ_masks(batch, names)
        hit = np.full(len(idx), np.nan)
        if defined.any():
            hit[defined] = interpretability_hit(out["cam"][defined], labels[-1][defined],
                                                              masks[defined], config.eval.mask_scaling)
        hits.append(hit)
        if keep_figures:
            _figure_examples(figures, batch, out, masks, defined, [split.records[i].dicom_id for i in idx])
    return {"probs": np.concatenate(probs), "labels": np.concatenate(labels), "hits": np.concatenate(hits),
            "sums": sums, "last": out, "figures": figures}


def _loss_metrics(run: dict, config) -> dict[str, float]:
    """The split's mean CE, mean selective MSE over images with gaze, and Eq. 11 with the learned sigmas."""
    sums, out = run["sums"], run["last"]
    ce = sums["ce"] / sums["known"] if sums["known"] else float("nan")
    if config.method == "plain":
        return {"loss": ce, "loss_ce": ce}
    sm = sums["sm"] / sums["gaze"] if sums["gaze"] else 0.0
    total = ggcam_losses.ggcam_total(ce, sm, out["log_sigma_ce"], out["log_sigma_sm"])
    scalars = {k: float(np.exp(out[f"log_{k}"])) for k in ("alpha", "sigma_sm", "sigma_ce")}
    return {"loss": float(total), "loss_ce": ce, "loss_sm": sm, **scalars}


def _interp_metrics(labels: np.ndarray, hits: np.ndarray) -> dict[str, float]:
    """Eq. 12 shares: per class (CHF, pneumonia) and pooled over both; NaN where no image has its organ mask."""
    defined = ~np.isnan(hits)
    out = {f"interp_{CLASSES[y]}": float(np.mean(hits[defined & (labels == y)]))
           if np.any(defined & (labels == y)) else float("nan") for y in ORGANS}
    out["interp"] = float(np.mean(hits[defined])) if defined.any() else float("nan")
    return out


def evaluate(predict, split, config, out_dir: str | None = None, stage=None) -> dict:
    """Metrics of one EvalSplit (see the module docstring); `out_dir` (test) also gets predictions.csv, and the
    result keeps one example per class for the report's Psi / Omega^Y overlays."""
    if split is None or len(split) == 0:
        return {"metrics": {}}
    run = _run_split(predict, split, config, keep_figures=out_dir is not None)
    labels, probs, hits = run["labels"], run["probs"], run["hits"]
    metrics = {**cls.summary(labels, probs, CLASSES), **_interp_metrics(labels, hits), **_loss_metrics(run, config)}
    ids = [r.dicom_id for r in split.records]
    cases = [{"case_id": i, "scores": {"label": int(y), "pred": int(np.argmax(p)), "correct": float(np.argmax(p) == y),
                                       **{f"p_{c}": float(v) for c, v in zip(CLASSES, p)},
                                       **({} if np.isnan(h) else {"interp_hit": float(h)})}}
             for i, y, p, h in zip(ids, labels, probs, hits)]
    if out_dir is not None:
        _write_predictions(os.path.join(out_dir, "predictions.csv"), cases)
    counts = {CLASSES[y]: (int(np.nansum(hits[labels == y])), int(np.sum(~np.isnan(hits[labels == y]))))
              for y in ORGANS}
    return {"metrics": metrics, "cases": cases, "figures": run["figures"], "interp_counts": counts,
            "class_counts": {c: int(np.sum(labels == k)) for k, c in enumerate(CLASSES)}}


def _write_predictions(path: str, cases: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = ["label", "pred"] + [f"p_{c}" for c in CLASSES] + ["interp_hit"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dicom_id"] + fields)
        for case in cases:
            writer.writerow([case["case_id"]] + [case["scores"].get(k, "") for k in fields])


def stages(config) -> list[Stage]:
    """One stage at Table 1's Adam lr with torch's ReduceLROnPlateau on the validation loss (Sec. 4.2: the lr "will
    be reduced to 10% once the validation loss has not decreased for P consecutive epochs"; factor
    `config.lr_factor`, patience Table 1's P, torch's rel threshold 1e-4) through `Stage.plateau`, which keeps
    Adam's moments across a drop, and early stopping after the row's `early_stop` epochs without a new best of the
    same metric (2P + 3, the reference code's 83 for EffNet: one epoch after a second drop). `config.monitor`
    (val/loss, min) drives the plateau, early stopping and the best checkpoint. Patience counts epochs, converted
    to evaluations (eval_every_epochs).
    """
    row = table1_row(config)
    every = max(1, int(config.get("eval_every_epochs", 1)))
    plateau = {"monitor": config.monitor, "mode": config.monitor_mode, "factor": float(config.lr_factor),
               "patience": math.ceil(int(row.plateau) / every)}
    return [Stage(name="train", epochs=int(config.epochs), optimizer={"lr": float(row.lr)}, monitor=config.monitor,
                  monitor_mode=config.monitor_mode, early_stop_patience=math.ceil(int(row.early_stop) / every),
                  plateau=plateau)]
