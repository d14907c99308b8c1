"""GazAT's evaluation protocol (Sec. 2.5.3) for one split and one stage's weights.

- Representation: after pretraining, a linear probe on frozen pooled encoder features (`gazejax.analysis.linear_probe`:
  logistic regression fitted on the training split's features, its C swept and chosen by validation AUROC), scored
  on the split ("probe_*"); after fine-tuning, the classifier head ("auroc", "accuracy", "f1").
  Single-label classes: one-vs-rest macro AUROC, arg-max accuracy, macro F1. Multi-label findings: mean per-finding
  AUROC, accuracy and F1 of p >= 0.5 per finding (F1 macro over findings), unknown labels left out.
- Attention alignment with held-out gaze ("attn_*"): model attention of every attention layer, bilinearly resized
  to `eval.saliency_grid`, min-max normalised and averaged over the layers ("combined"; per layer too), against the
  split's gaze: NSS and AUC-Judd with the fixated cells as fixation map, CC with the gaze attention map (duration-
  weighted, readers averaged: Sec. 2.2.2's defaults whatever the run trained with). Fine-tuned CNNs also score
  Grad-CAM ("gradcam_*"; `gazejax.models.ssl` for why ReLU(cam) is Grad-CAM) of the true class (single-label) or
  of the most confident true finding (multi-label; the top prediction for images without findings).
- Pointing game ("pointing"): hit when the peak cell of the map (its centre, in image pixels) lies within
  `eval.pointing_tolerance` x image side of a finding: REFLACX anomaly ellipses (certainty >= 3; the ellipse
  inscribed in each box), EGD-CXR the organ of the class (heart for CHF, lungs for pneumonia, as GG-CAM's Eq. 12).
  Images without a finding location are not scored; a constant map (no peak) is a miss.
- "train_calls": the training calls the weights have seen (the model's "progress" count), increasing through a
  stage: the default checkpoint monitor, so a stage's last checkpoint is the one used (no label-based selection).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import numpy as np
from scipy import ndimage
from scipy.special import expit, softmax

from gazejax.analysis import linear_probe
from gazejax.analysis.maps import minmax, resize_maps
from gazejax.data.cxr import labels as cxr_labels
from gazejax.data import views
from gazejax.engine.api import iterate_in_batches
from gazejax.metrics import classification as cls
from gazejax.metrics import saliency
from gazejax.metrics.localization import organ_masks, pointing_hit
from gazejax.methods.gazat.spec import is_multilabel, task

KEEP = ("label", "label_mask", "has_gaze", "fixations", "fixation_valid", "fixation_weights", "fixation_sigma",
        "fixation_reader", "reader_weights", "findings", "finding_valid", "organ_masks", "has_organ_masks")


def forward(predict, dataset, batch: int, keep: tuple[str, ...] = ("label", "label_mask")) -> dict[str, Any]:
    """Model outputs over a MapDataset of examples, concatenated: embedding [N, F], logits [N, K], attention
    {layer: [N, h, w]}, cam [N, h, w, K] (CNN), train_calls [N] (the model's count, repeated), plus the examples'
    `keep` fields and "image" [N, H, W]."""
    parts: list[dict] = []
    for idx in iterate_in_batches(range(len(dataset)), batch):
        examples = [dataset[i] for i in idx]
        images = np.stack([ex["image"] for ex in examples])
        # One input shape for every call (the last batch padded by repetition): one compilation per model.
        padded = np.concatenate([images, np.repeat(images[-1:], batch - len(idx), axis=0)])
        out = jax.tree.map(lambda y: y[:len(idx)] if np.ndim(y) else y, predict(padded))
        part = {k: np.asarray(out[k]) for k in ("embedding", "logits", "cam") if k in out}
        part["attention"] = {k: np.asarray(v) for k, v in out["attention"].items()}
        if "train_calls" in out:
            part["train_calls"] = np.full(len(idx), int(np.asarray(out["train_calls"])), np.int64)
        part.update({k: np.stack([ex[k] for ex in examples]) for k in keep if k in examples[0]})
        part["image"] = images[..., 0]
        parts.append(part)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    return expit(logits) if multilabel else softmax(logits, axis=1)


def targets(run: dict, multilabel: bool) -> np.ndarray:
    """Int classes [N], or multi-label targets [N, K] with NaN where the label is unknown."""
    if not multilabel:
        return run["label"].astype(int)
    return np.where(run["label_mask"], run["label"].astype(np.float64), np.nan)


def probe(predict, split, run: dict, config, multilabel: bool) -> dict[str, Any]:
    """Linear probe fitted on the split's probe_train features, C chosen on probe_val, applied to `run`."""
    batch = int(config.eval.batch)
    train = forward(predict, split.probe_train, batch)
    val = run if split.name == "val" else forward(predict, split.probe_val, batch)
    return linear_probe.linear_probe(train["embedding"], targets(train, multilabel), val["embedding"],
                                     targets(val, multilabel), run["embedding"], functools.partial(cls.auroc, warn=False),
                                     cs=tuple(float(c) for c in config.eval.probe_cs),
                                     num_classes=None if multilabel else len(cxr_labels.label_names(
                                         config.data.label_set)))


# ---- attention alignment -----------------------------------------------------------------------------------------
def _regions(run: dict, i: int, config) -> np.ndarray | None:
    """Finding location [H, W] bool of image i (module docstring), or None."""
    h, w = run["image"].shape[1:3]
    if "findings" in run and run["finding_valid"][i].any():
        rows, cols = np.mgrid[0:h, 0:w]
        region = np.zeros((h, w), bool)
        for r0, c0, r1, c1 in run["findings"][i][run["finding_valid"][i]]:
            ry, rx = max((r1 - r0) / 2, 0.5), max((c1 - c0) / 2, 0.5)
            region |= ((rows - (r0 + r1) / 2) / ry) ** 2 + ((cols - (c0 + c1) / 2) / rx) ** 2 <= 1.0
        return region
    if "organ_masks" in run and config.data.label_set == "3class":
        batch = {k: run[k][i:i + 1] for k in ("label", "organ_masks", "has_organ_masks")}
        batch["image"] = run["image"][i:i + 1, ..., None]
        masks, defined = organ_masks(batch, ("left_lung", "right_lung", "mediastanum", "aortic_knob"))
        return masks[0] if defined[0] else None
    return None


def gaze_truth(run: dict, config, grid: tuple[int, int]) -> list[dict | None]:
    """Per image: None without gaze, else {"map" [grid], "fixated" [grid] bool, "distance" [H, W] to the finding
    location (None without one)}."""
    spec = views.AttentionSpec()  # Sec. 2.2.2 defaults: the same truth for every run and ablation
    h, w = run["image"].shape[1:3]
    out = []
    for i in range(len(run["image"])):
        if not run["has_gaze"][i]:
            out.append(None)
            continue
        ex = {k: run[k][i] for k in ("fixations", "fixation_valid", "fixation_weights", "fixation_sigma",
                                     "fixation_reader", "reader_weights") if k in run}
        ex["image"] = run["image"][i]
        pts = ex["fixations"][ex["fixation_valid"]]
        cells = np.floor((pts + 0.5) * np.array(grid) / np.array([h, w])).astype(int)
        cells = np.clip(cells, 0, np.array(grid) - 1)
        fixated = np.zeros(grid, bool)
        fixated[cells[:, 0], cells[:, 1]] = True
        region = _regions(run, i, config)
        out.append({"map": views.attention_map(ex, grid, spec), "fixated": fixated,
                    "distance": None if region is None else ndimage.distance_transform_edt(~region)})
    return out


def alignment(maps: np.ndarray, truth: list[dict | None], tolerance: float, prefix: str,
              peak_maps: np.ndarray | None = None) -> tuple[dict[str, float], list[dict[str, float]]]:
    """NSS, AUC-Judd and CC of `maps [N, *grid]` and the pointing game of `peak_maps [N, h, w]` (default `maps`:
    the peak is taken on the map's own grid, so bilinear upsampling's flat borders cannot move it) against `truth`;
    means over the scored images, and per-image scores."""
    peak_maps = maps if peak_maps is None else peak_maps
    per_image, sums = [], {k: [] for k in ("nss", "auc_judd", "cc", "pointing")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant maps give NaN, left out of the means
        for m, peak_map, t in zip(maps, peak_maps, truth):
            scores: dict[str, float] = {}
            if t is not None:
                scores = {"nss": saliency.nss(m, t["fixated"]), "auc_judd": saliency.auc_judd(m, t["fixated"]),
                          "cc": saliency.cc(m, t["map"]) if np.ptp(t["map"]) > 0 else float("nan")}
                if t["distance"] is not None:
                    scores["pointing"] = pointing_hit(peak_map, t["distance"], tolerance)
            for k, v in scores.items():
                sums[k].append(v)
            per_image.append({f"{prefix}{k}": v for k, v in scores.items()})
    metrics = {f"{prefix}{k}": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
               for k, v in sums.items()}
    metrics[f"{prefix}pointing_n"] = float(len(sums["pointing"]))
    return metrics, per_image


def explained_class(run: dict, y: np.ndarray) -> np.ndarray:
    """The class each Grad-CAM explains [N]: the true class (single-label); the known positive finding with the
    highest logit, else the highest logit (multi-label)."""
    if y.ndim == 1:
        return y.astype(int)
    positive = np.nan_to_num(y) > 0.5
    scores = np.where(positive, run["logits"], -np.inf)
    return np.where(positive.any(1), np.argmax(scores, 1), np.argmax(run["logits"], 1))


def model_maps(run: dict, grid: tuple[int, int], gradcam_classes: np.ndarray | None
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(maps [N, *grid], peak maps [N, h, w]) to score, by metric prefix: "attn_" (the layers combined; peaks on
    the finest layer's grid), "attn_<layer>_" per layer (peaks on its own grid) and "gradcam_" (ReLU of the CAM
    of `gradcam_classes`, peaks on the CAM grid) when given and the model has a CAM; min-max normalised per image."""
    native = {name: minmax(np.asarray(m, np.float32)) for name, m in run["attention"].items()}
    fine = max((m.shape[1:] for m in native.values()), key=lambda s: s[0] * s[1])

    def combined(size):
        return minmax(np.mean([minmax(resize_maps(m, size)) for m in native.values()], axis=0))

    maps = {"attn_": (combined(grid), combined(fine))}
    if len(native) > 1:
        maps.update({f"attn_{name}_": (minmax(resize_maps(m, grid)), m) for name, m in native.items()})
    if gradcam_classes is not None and "cam" in run:
        c = np.asarray(gradcam_classes)[:, None, None, None]
        cam = minmax(np.maximum(np.take_along_axis(run["cam"], c, axis=3)[..., 0], 0.0))
        maps["gradcam_"] = (minmax(resize_maps(cam, grid)), cam)
    return maps


def _figures(run: dict, truth: list, maps: dict, items: list, count: int = 4) -> list[dict]:
    """The first `count` images with gaze: image, gaze map and the scored model maps, for the report."""
    out = []
    for i, t in enumerate(truth):
        if t is not None and len(out) < count:
            out.append({"dicom_id": items[i].dicom_id, "image": run["image"][i], "gaze": t["map"],
                        **{k.rstrip("_"): maps[k][0][i] for k in ("attn_", "gradcam_") if k in maps}})
    return out


def evaluate(predict, split, config, out_dir: str | None = None, stage=None) -> dict[str, Any]:
    """Metrics of one GazATSplit with one stage's weights (module docstring); the test split also returns the
    embeddings and labels (t-SNE) and a few figure examples."""
    del out_dir
    if split is None or len(split) == 0:
        return {"metrics": {}}
    multilabel, names = is_multilabel(config), cxr_labels.label_names(config.data.label_set)
    pretrain = task(config, stage) == "pretrain"
    run = forward(predict, split.examples, int(config.eval.batch), KEEP)
    y = targets(run, multilabel)
    result: dict[str, Any] = {}
    if pretrain:
        fit = probe(predict, split, run, config, multilabel)
        metrics = {f"probe_{k}": v for k, v in cls.summary(y, fit["probs"], names).items()}
        metrics.update(probe_c=fit["c"], probe_val_auroc=fit["val_score"])
        result["probe_scores"] = fit["scores"]
    else:
        metrics = cls.summary(y, probabilities(run["logits"], multilabel), names)
    if "train_calls" in run:
        metrics["train_calls"] = float(run["train_calls"][0])
    grid = tuple(int(g) for g in config.eval.saliency_grid)
    key = ("truth", grid)
    if key not in split.cache:  # the gaze side never changes between evaluations of a split
        split.cache[key] = gaze_truth(run, config, grid)
    truth = split.cache[key]
    maps = model_maps(run, grid, None if pretrain else explained_class(run, y))
    tolerance = float(config.eval.pointing_tolerance) * max(run["image"].shape[1:3])
    cases = [{"case_id": it.dicom_id, "scores": {}} for it in split.items]
    for prefix, (m, peaks) in maps.items():
        scores, per_image = alignment(m, truth, tolerance, prefix, peaks)
        metrics.update(scores if prefix in ("attn_", "gradcam_") else
                       {k: v for k, v in scores.items() if k.endswith(("nss", "cc"))})
        if prefix in ("attn_", "gradcam_"):
            for case, s in zip(cases, per_image):
                case["scores"].update(s)
    result.update(metrics=metrics, cases=cases)
    if split.name == "test":
        result.update(embeddings=run["embedding"], labels=y, figures=_figures(run, truth, maps, split.items))
    return result
