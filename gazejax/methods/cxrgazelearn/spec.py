"""CXRGazeLearn (Qiu et al.): joint 3-class chest X-ray diagnosis and gaze saliency prediction by multi-stage
cooperative learning, and the baselines of its Tables 1-2, as one method family for the one trainer.

Stages (`config.method="cxrgazelearn"`; Adam 1e-4, 50 epochs each, early stopping on the validation split; each
starts from the previous stage's best checkpoint):
  stage1a  triplet pretraining of the whole DenseNet-201 ("features/*"; monitor val/triplet, min)
  stage1b  CE fine-tuning of the DenseNet with a linear head on GAP(relu(norm5)) ("features/*", "dnet_head/*";
           val/auroc)
  stage2   the Res_SE-UNet with the frozen DenseNet's transition3 map injected at its decoder start, KL loss
           ("res_se_unet/*"; val/kl, min)
  stage3   the multi-scale fusion classifier on both encoders, CE ("fusion/*"; val/auroc)
The parts a stage does not train are frozen (`Stage.frozen`, "frozen in Stage 2 and 3", Sec. III.B): their
parameters and BatchNorm statistics stay bit-identical and they run in inference mode (`apply_kwargs`).
Baselines: dnet201_cl (1a + 1b), dnet201 (1b), res_se_unet / unet_s (stage 2 without the DenseNet, Res_SE or plain
encoder), mt_unet (one joint stage, CE and KL weighted by learnable sigmas, `gazejax.losses.mtunet_weighting`).
A stage's `options` say which loss it trains ("loss") and what its evaluation scores: "head" (the outputs key of
the classification logits), "saliency", "embedding" (the triplet loss over the split), and which parts of the
full model run in inference mode ("inference").
Model: `gazejax.models.saliency_unet`. Data: `gazejax.data.cxr.pipeline` (synthetic EGD-CXR by default; the paper's
983/100 split), gaze maps normalised to sum 1 at the saliency output grid (= the input size).
Evaluation (test split, held out): OvR macro / per-class AUC and accuracy; saliency KL, CC, HS (the paper's
histogram similarity, sum min(P, Q) of the maps normalised to sum 1) and SIM (the MIT benchmark's, min-max
stretched first) of softmax(saliency logits) against the gaze map, mean and std over images, with per-image scores
in `cases` so the experiment runner can pair them (t-tests); Grad-CAM of the DenseNet head.
"""
from __future__ import annotations

import csv
import logging
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy.special import softmax

from gazejax import losses, models
from gazejax.methods.cxrgazelearn.losses import triplet_loss
from gazejax.engine.api import DataBundle, Stage, iterate_in_batches
from gazejax.data.cxr.labels import THREE_CLASS as CLASSES
from gazejax.metrics import classification as cls
from gazejax.metrics import saliency as sal_metrics

log = logging.getLogger("gazejax")

GAZE_KEY = "gaze_saliency"  # batch key of the gaze map at the saliency grid (data.gaze_grids["saliency"])
SALIENCY_METRICS = {"kl": sal_metrics.kl_div, "cc": sal_metrics.cc, "hs": sal_metrics.hs, "sim": sal_metrics.sim}
EVAL_KEYS = ("image", "label", "label_mask", "has_gaze", GAZE_KEY)
# name -> (trainable globs of the full model, options, monitor, monitor mode, frozen parts of the full model)
STAGES = {
    "stage1a": (("features/*",), {"loss": "triplet", "embedding": True}, "val/triplet", "min",
                ("res_se_unet", "fusion")),
    "stage1b": (("features/*", "dnet_head/*"), {"loss": "ce", "head": "dnet_logits"}, "val/auroc", "max",
                ("res_se_unet", "fusion")),
    "stage2": (("res_se_unet/*",), {"loss": "kl", "saliency": True}, "val/kl", "min", ("densenet", "fusion")),
    "stage3": (("fusion/*",), {"loss": "ce", "head": "logits", "saliency": True}, "val/auroc", "max",
               ("densenet", "res_se_unet")),
    "mt_unet": (("*",), {"loss": "mtunet", "head": "logits", "saliency": True}, "val/loss", "min", ()),
}
# parameter / collection globs of each part of the full model (models.saliency_unet.GROUPS)
PART_PATTERNS = {"densenet": ("features/*", "dnet_head/*"), "res_se_unet": ("res_se_unet/*",),
                 "fusion": ("fusion/*",)}
PLANS = {"cxrgazelearn": ("stage1a", "stage1b", "stage2", "stage3"), "dnet201_cl": ("stage1a", "stage1b"),
         "dnet201": ("stage1b",), "res_se_unet": ("stage2",), "unet_s": ("stage2",), "mt_unet": ("mt_unet",)}
EVALUATED = {"cxrgazelearn": ("stage1b", "stage2")}  # in-run ablations: DNet201-CL, saliency before stage 3


def _plan(config) -> tuple[str, ...]:
    if config.method not in PLANS:
        raise ValueError(f"cxrgazelearn: unknown method {config.method!r}; choose one of "
                         f"{', '.join(PLANS)}")
    return PLANS[config.method]


def encoder_kwargs(config) -> dict[str, Any]:
    """DenseNetEncoder arguments from config.model (DenseNet-201 in preset=paper)."""
    m = config.model
    return {"num_classes": len(CLASSES), "growth_rate": int(m.densenet_growth),
            "block_config": tuple(int(b) for b in m.densenet_blocks),
            "num_init_features": int(m.densenet_init_features), "bn_size": int(m.densenet_bn_size),
            "cut": str(m.encoder_cut)}


def build_model(config):
    m, method = config.model, config.method
    _plan(config)
    if config.preset == "paper" and scratch_warning(config):
        log.warning("WARNING (paper preset): %s", scratch_warning(config))
    widths, dtype = tuple(int(w) for w in m.unet_widths), jnp.dtype(m.dtype)
    common = {"dtype": dtype, "conv_impl": str(m.get("conv_impl", "auto"))}
    if method == "cxrgazelearn":
        return models.build("cxrgazelearn", widths=widths, encoder_kwargs=encoder_kwargs(config),
                            hidden=int(m.fusion_hidden), dropout=float(m.fusion_dropout), detach=bool(m.detach),
                            **common)
    if method in ("dnet201", "dnet201_cl"):
        return models.build("densenet_encoder", **encoder_kwargs(config), **common)
    if method == "mt_unet":
        return models.build("mt_unet", widths=widths, num_classes=len(CLASSES), hidden=int(m.fusion_hidden),
                            dropout=float(m.fusion_dropout), **common)
    return models.build("saliency_unet", widths=widths, encoder="res_se" if method == "res_se_unet" else "plain",
                        **common)


def init_batch(config) -> dict[str, np.ndarray]:
    return {"image": np.zeros((1, *config.data.image_size, 1), np.float32)}


def stages(config) -> list[Stage]:
    """The method's stages (module docstring); baselines without the full model's submodules train everything
    their stage's loss reaches ("*")."""
    plan, full = _plan(config), config.method in ("cxrgazelearn", "dnet201", "dnet201_cl")
    epochs = dict(config.get("stage_epochs", {}) or {})
    out = []
    for name in plan:
        trainable, options, monitor, mode, parts = STAGES[name]
        parts = parts if config.method == "cxrgazelearn" else ()  # the baselines' models have no other parts
        out.append(Stage(name=name, epochs=int(epochs.get(name, config.epochs)),
                         trainable=trainable if full else ("*",), monitor=monitor, monitor_mode=mode,
                         early_stop_patience=int(config.early_stop_patience),
                         options=dict(options, inference=parts),
                         frozen=tuple(p for part in parts for p in PART_PATTERNS[part]),
                         evaluate=name in EVALUATED.get(config.method, ())))
    return out


def apply_kwargs(stage) -> dict[str, Any]:
    """The frozen parts of the full model run in inference mode (`CXRGazeLearnNet(..., inference=...)`)."""
    parts = tuple(stage.options.get("inference", ())) if stage is not None else ()
    return {"inference": parts} if parts else {}


def scratch_warning(config) -> str | None:
    """The warning of a paper-preset DenseNet trained from scratch (no `model.init_from`), else None."""
    if config.method not in ("cxrgazelearn", "dnet201", "dnet201_cl") or config.model.get("init_from"):
        return None
    return ("the DenseNet starts from scratch: model.init_from is empty, so no ImageNet weights are loaded "
            "(convert torchvision's densenet201 with `python -m gazejax.models.convert --arch densenet201 "
            "--checkpoint densenet201.pth --out DIR --num-classes 0` and set --config.model.init_from=DIR)")


def _options(config, stage) -> dict[str, Any]:
    return dict(stage.options) if stage is not None else dict(STAGES[_plan(config)[-1]][1])


def loss_fn(outputs: dict, batch: dict, params: Any, config, stage=None) -> tuple[jnp.ndarray, dict]:
    """The stage's loss (`stage.options["loss"]`): triplet, CE of `options["head"]`, KL, or MT-UNet's weighted sum."""
    del params
    opts, lc = _options(config, stage), config.loss
    kind, known = opts["loss"], batch["label_mask"]
    if kind == "triplet":
        loss, count = triplet_loss(outputs["embedding"], batch["label"], known, float(lc.triplet_margin),
                                   str(lc.triplet_mining))
        return loss, {"loss_triplet": loss, "triplets": count}
    if kind in ("kl", "mtunet"):
        kl = losses.kl_saliency(outputs["saliency"], batch[GAZE_KEY], batch["has_gaze"], form=str(lc.kl_form))
        if kind == "kl":
            return kl, {"loss_kl": kl}
    ce = losses.softmax_ce(outputs[opts["head"]], jnp.maximum(batch["label"], 0), mask=known)
    if kind == "ce":
        return ce, {"loss_ce": ce}
    if kind != "mtunet":
        raise ValueError(f"cxrgazelearn: unknown stage loss {kind!r}")
    total = losses.mtunet_weighting(ce, kl, outputs["log_sigma_ce"], outputs["log_sigma_kl"])
    return total, {"loss_ce": ce, "loss_kl": kl, "sigma_ce": jnp.exp(outputs["log_sigma_ce"]),
                   "sigma_kl": jnp.exp(outputs["log_sigma_kl"])}


def gaze_sigma(config) -> float:
    """data.gaze_sigma (DICOM pixels) in source pixels of the data used: scaled by the synthetic height / 3056
    for the synthetic set, so a blob covers the same share of the image."""
    from gazejax.data.cxr import pipeline as cxr_pipeline

    return cxr_pipeline.source_pixels(config, float(config.data.gaze_sigma))


def make_data(config, process_index: int = 0, process_count: int = 1) -> DataBundle:
    from gazejax.data.cxr import pipeline as cxr_pipeline

    grid, size = tuple(config.data.gaze_grids.get("saliency", ())), tuple(config.data.image_size)
    if grid != size:
        raise ValueError(f"cxrgazelearn: data.gaze_grids.saliency {grid} must equal data.image_size "
                         f"{size} (the saliency maps are predicted at the input grid)")
    uses_gaze = any(STAGES[name][1]["loss"] in ("kl", "mtunet") for name in _plan(config))
    return DataBundle(**cxr_pipeline.parts_with_gaze_sigma(config, gaze_sigma(config), process_index, process_count,
                                                          needs_gaze=uses_gaze))


# ---- evaluation --------------------------------------------------------------------------------------------------
def saliency_distribution(logits: np.ndarray) -> np.ndarray:
    """softmax over the flattened map: `[B, H, W, 1]` logits -> `[B, H, W]` float64 maps summing to 1."""
    logits = np.asarray(logits, np.float64)
    flat = softmax(logits.reshape(logits.shape[0], -1), axis=1)
    return flat.reshape(logits.shape[:3])


def _stack(split, idx) -> dict[str, np.ndarray]:
    examples = [split.examples[i] for i in idx]
    return {k: np.stack([ex[k] for ex in examples]) for k in EVAL_KEYS if k in examples[0]}


def _keep_figure(found: dict, ex: dict, dicom_id: str) -> None:
    """The first test image of each class (with gaze when one has it) for the Fig. 2 panels."""
    name = CLASSES[ex["label"]]
    if name not in found or (ex["has_gaze"] and not found[name]["has_gaze"]):
        found[name] = dict(ex, dicom_id=dicom_id)


def _run_split(predict, split, config, opts: dict, keep_figures: bool) -> dict[str, Any]:
    """Predicts every image: logits of the stage's head, per-image saliency scores, embeddings, figure panels."""
    head, rows, figures, out = opts.get("head"), [], {}, {}
    logits, embeddings, labels, known = [], [], [], []
    for idx in iterate_in_batches(range(len(split)), int(config.eval.batch)):
        batch = _stack(split, idx)
        out = predict(batch["image"])
        labels.append(np.asarray(batch["label"]).astype(int))
        known.append(np.asarray(batch["label_mask"], bool))
        if head:
            logits.append(np.asarray(out[head], np.float64))
        if opts.get("embedding"):
            embeddings.append(np.asarray(out["embedding"], np.float32))
        maps = saliency_distribution(out["saliency"]) if opts.get("saliency") else None
        for j, i in enumerate(idx):
            gaze = batch[GAZE_KEY][j, ..., 0] if GAZE_KEY in batch else None
            scores = ({k: f(maps[j], gaze) for k, f in SALIENCY_METRICS.items()}
                      if maps is not None and batch["has_gaze"][j] else {})
            rows.append(scores)
            if keep_figures:
                _keep_figure(figures, {"image": batch["image"][j, ..., 0], "gaze": gaze,
                                       "label": int(batch["label"][j]), "has_gaze": bool(batch["has_gaze"][j]),
                                       "saliency": None if maps is None else maps[j],
                                       "gradcam": None if "gradcam" not in out else out["gradcam"][j],
                                       "logits": None if not head else np.asarray(out[head][j])},
                             split.records[i].dicom_id)
    cat = lambda parts: np.concatenate(parts) if parts else None  # noqa: E731
    return {"labels": cat(labels), "known": cat(known), "logits": cat(logits), "embeddings": cat(embeddings),
            "saliency": rows, "figures": figures, "last": out}


def _saliency_summary(rows: list[dict]) -> dict[str, float]:
    """Mean and std (ddof 1, the paper's "mean +- std") over images of every saliency metric; NaNs left out."""
    out = {}
    for key in SALIENCY_METRICS:
        vals = np.array([r[key] for r in rows if key in r], np.float64)
        vals = vals[np.isfinite(vals)]
        out[key] = float(vals.mean()) if vals.size else float("nan")
        out[f"{key}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
    return out


def _split_metrics(run: dict, opts: dict, config) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of one split for the stage's options; returns them and the class probabilities (or None)."""
    metrics, probs, labels, known = {}, None, run["labels"], run["known"]
    if run["logits"] is not None:
        probs = softmax(run["logits"], axis=1)
        metrics.update(cls.summary(labels[known], probs[known], CLASSES))
        metrics["loss_ce"] = float(-np.mean(np.log(probs[known, labels[known]] + 1e-300)))
    if opts.get("saliency"):
        metrics.update(_saliency_summary(run["saliency"]))
        metrics["loss_kl"] = metrics["kl"]
    if opts.get("embedding"):
        loss, count = triplet_loss(jnp.asarray(run["embeddings"]), jnp.asarray(labels), jnp.asarray(known),
                                   float(config.loss.triplet_margin), str(config.loss.triplet_mining))
        metrics.update(triplet=float(loss), triplets=float(count))
    kind = opts["loss"]
    if kind == "mtunet":
        last = run["last"]
        metrics["loss"] = float(losses.mtunet_weighting(metrics["loss_ce"], metrics["loss_kl"],
                                                        last["log_sigma_ce"], last["log_sigma_kl"]))
        metrics.update({k: float(np.exp(last[f"log_{k}"])) for k in ("sigma_ce", "sigma_kl")})
    else:
        metrics["loss"] = metrics.get({"triplet": "triplet", "kl": "loss_kl", "ce": "loss_ce"}[kind], float("nan"))
    return metrics, probs


def evaluate(predict, split, config, out_dir: str | None = None, stage=None) -> dict:
    """Metrics of one EvalSplit for `stage` (the run's last stage when None; see the module docstring).

    Returns {"metrics", "cases" (per image: label, prediction, class probabilities, kl / cc / hs / sim), "figures"
    (one image per class), "class_counts", "stage"}; `out_dir` (test) also gets predictions.csv and
    figure_maps.npz (the figure images' predicted maps, which a sibling run's report can show)."""
    if split is None or len(split) == 0:
        return {"metrics": {}}
    opts = _options(config, stage)
    run = _run_split(predict, split, config, opts, keep_figures=out_dir is not None)
    metrics, probs = _split_metrics(run, opts, config)
    cases = []
    for i, rec in enumerate(split.records):
        scores = {"label": int(run["labels"][i]), **run["saliency"][i]}
        if probs is not None:
            scores.update(pred=int(np.argmax(probs[i])), correct=float(np.argmax(probs[i]) == run["labels"][i]),
                          **{f"p_{c}": float(v) for c, v in zip(CLASSES, probs[i])})
        cases.append({"case_id": rec.dicom_id, "scores": scores})
    if out_dir is not None:
        _write_predictions(out_dir, cases, run["figures"])
    return {"metrics": metrics, "cases": cases, "figures": run["figures"],
            "stage": None if stage is None else stage.name,
            "class_counts": {c: int(np.sum(run["labels"] == k)) for k, c in enumerate(CLASSES)}}


def _write_predictions(out_dir: str, cases: list[dict], figures: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    fields = ["label", "pred"] + [f"p_{c}" for c in CLASSES] + list(SALIENCY_METRICS)
    with open(os.path.join(out_dir, "predictions.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dicom_id"] + fields)
        for case in cases:
            writer.writerow([case["case_id"]] + [case["scores"].get(k, "") for k in fields])
    maps = {ex["dicom_id"]: ex["saliency"] for ex in figures.values() if ex.get("saliency") is not None}
    np.savez_compressed(os.path.join(out_dir, "figure_maps.npz"), **maps)
