"""SAN + AAB for 3D brain-tumour segmentation (Huang et al., BMVC 2021) and its Section 4.1 variants.

Model: `gazejax.models.segmenter.GazeSegmenter` (EquiUnet backbone; SAN on the 4x down-sampled input; AAB fusing
SAN's M2 into the encoder's E4). Loss: L = w1 * L_seg + w2 * L_g (Eq. 3-4), deep supervision summed when enabled,
survival cross-entropy for `ours_surv`; +gaze*'s full-resolution gaze head takes Eq. 4 against the up-sampled
target. Data: BraTS 2020 layout (synthetic by default). Evaluation (`eval.mode`: one pass over the whole brain box,
or sliding windows): Dice and HD95 of ET/TC/WT per case in the original geometry, SAN gaze vs the readers' gaze
(CC, KL, SIM, NSS, AUC-Judd).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gazejax import losses, models
from gazejax.data.transforms3d import AUGMENT_SCHEMES
from gazejax.engine.api import DataBundle, Stage

log = logging.getLogger("gazejax")

VARIANTS = ("backbone", "ours", "gaze_star", "san_star", "ours_no_gaze", "ours_surv", "cbam", "tasn")
GAZE_FREE = ("backbone", "ours_no_gaze")  # the variants that never read a gaze map


def build_model(config):
    m, method = config.model, config.method
    if method not in VARIANTS:
        raise ValueError(f"unknown method {method!r} for san_aab; choose one of {', '.join(VARIANTS)}")
    width = {"equiunet": m.width, "nnunet": m.nnunet_width, "dmfnet": m.dmfnet_width}[m.backbone]
    return models.build(
        "gaze_segmenter", method="ours" if method in ("ours_surv", "ours_no_gaze") else method,
        num_classes=3, width=width, in_channels=4, deep_supervision=m.deep_supervision,
        san_width=m.san_width, aab_heads=m.aab_heads, aab_head_dim=m.aab_head_dim,
        aab_scale_dim=int(m.get("aab_scale_dim", 0)), gaze_star_attention=str(m.get("gaze_star_attention", "feature")),
        gaze_star_prior=float(m.get("gaze_star_prior", 0.1)),
        gaze_star_head_std=float(m.get("gaze_star_head_std", 0.01)),
        survival_classes=3 if method == "ours_surv" else 0, dtype=jnp.dtype(m.dtype), backbone=m.backbone,
        remat=bool(config.get("remat", False)), conv_impl=str(m.get("conv_impl", "auto")))


def init_batch(config) -> dict[str, np.ndarray]:
    crop = tuple(config.data.crop_size)
    return {"image": np.zeros((1,) + crop + (4,), np.float32)}


def loss_fn(outputs: dict, batch: dict, params: Any, config, stage=None) -> tuple[jnp.ndarray, dict]:
    """Eq. 3 soft Dice on [ET, TC, WT] (+ deep supervision), Eq. 4 gaze BCE where gaze exists, survival CE."""
    w = config.loss
    seg = losses.soft_dice_loss(outputs["seg"], batch["target"])
    metrics = {"loss_seg_main": seg}
    for i, deep in enumerate(outputs.get("deep") or []):
        d = losses.soft_dice_loss(deep, batch["target"])
        metrics[f"loss_deep{i}"] = d
        seg = seg + d
    total = w.seg * seg
    metrics["loss_seg"] = seg
    if outputs.get("gaze") is not None:
        if config.method == "ours_no_gaze":  # SAN supervised by the down-sampled whole-tumour mask, never gaze
            target, has = batch["wt_lowres"], jnp.ones(batch["wt_lowres"].shape[0], bool)
        else:
            target, has = batch["gaze"], batch["has_gaze"]
        g = _gaze_loss(outputs, target, has)
        for i, extra in enumerate(outputs.get("gaze_extra") or []):  # TASN: detail attention is supervised too
            ge = losses.gaze_bce(extra, target, has)
            metrics[f"loss_gaze_extra{i}"] = ge
            g = g + ge
        metrics["loss_gaze"] = g
        total = total + w.gaze * g
    if outputs.get("survival") is not None:
        labels = batch["survival"]  # -1 = unknown survival: masked out
        ce = losses.softmax_ce(outputs["survival"], jnp.maximum(labels, 0), mask=labels >= 0)
        metrics["loss_survival"] = ce
        total = total + w.survival * ce
    return total, metrics


def upsample_gaze_target(target: jnp.ndarray, shape: tuple) -> jnp.ndarray:
    """Gaze target `[B, *S/16, 1]` -> `[B, *S, 1]` by linear interpolation between cell centres (half-pixel,
    edges clamped), the grid that `pipeline.render_gaze` samples; values stay in [0, 1]."""
    return jax.image.resize(target.astype(jnp.float32), tuple(shape), "linear")


def _gaze_loss(outputs: dict, target: jnp.ndarray, has: jnp.ndarray) -> jnp.ndarray:
    """Eq. 4 on the SAN-grid logits, or for +gaze* on its full-resolution head ("gaze_full", training only)."""
    full = outputs.get("gaze_full")
    if full is not None:
        return losses.gaze_bce(full, upsample_gaze_target(target, full.shape), has)
    return losses.gaze_bce(outputs["gaze"], target, has)


def make_data(config, process_index: int = 0, process_count: int = 1) -> DataBundle:
    import grain

    from gazejax.data import io
    from gazejax.data.brats import pipeline as brats_pipeline
    from gazejax.data.brats import reader as brats
    from gazejax.data.brats import records as brats_records

    d = config.data
    root = resolve_root(config)
    if d.gaze_dir and not os.path.isdir(d.gaze_dir):
        raise FileNotFoundError(f"data.gaze_dir {d.gaze_dir!r}: no such directory")
    gaze_dir = d.gaze_dir or os.path.join(root, "gaze")
    cache = io.cache_dir(d.cache_dir, "brats", root)
    if d.get("source", "files") == "tfds":
        records = brats_pipeline.tfds_records(root, d.get("tfds_dir", "") or os.path.join(cache, "tfds"),
                                              d.gaze_readers, d.gaze_sigma)
    else:
        survival = brats.read_survival(root)
        records = [brats_records.prepare_case(c, cache, gaze_dir if os.path.isdir(gaze_dir) else None,
                                              d.gaze_readers, d.gaze_sigma, survival) for c in brats.list_cases(root)]
    brats_records.report_duplicates(records)
    parts = brats_pipeline.build_splits(records, d, root)
    if config.method not in GAZE_FREE and not any(r.has_gaze for r in parts["train"]):
        where = d.get("tfds_dir", "") or "the TFDS data set" if d.get("source", "files") == "tfds" else gaze_dir
        raise ValueError(f"data.gaze_dir: method {config.method!r} trains on gaze, but no training case has any "
                         f"(searched {where} for <case_id>_fixations.csv, readers {d.gaze_readers!r})")
    crop, sigma, p, scheme = tuple(d.crop_size), d.gaze_sigma, d.augment_p, d.get("augment", "per_step")
    if scheme not in AUGMENT_SCHEMES:
        raise ValueError(f"data.augment: unknown scheme {scheme!r}; expected one of {', '.join(AUGMENT_SCHEMES)}")
    train_records = parts["train"]
    if d.get("whole_volume", False):  # the whole brain box of every case, no random crop
        spatial = int(config.get("mesh", {}).get("spatial", 1) or 1)
        crop = brats_pipeline.whole_volume_shape(train_records, math.lcm(brats_pipeline.SAN_STRIDE, spatial))
        log.info("whole-volume training: every brain box zero-padded to %s (instead of %s crops)", crop,
                 tuple(d.crop_size))
    source = grain.MapDataset.source(train_records)

    def augment(record, rng):
        return brats_pipeline.make_train_example(record, crop, sigma, rng, augment_p=p, augment_scheme=scheme)

    info = {"root": root, "cache": cache, "synthetic": not d.root,
            **({"train_shape": list(crop)} if d.get("whole_volume", False) else {}),
            **{f"{k}_cases": [r.case_id for r in v] for k, v in parts.items()},
            "with_gaze": {k: sum(r.has_gaze for r in v) for k, v in parts.items()}}
    log.info("BraTS data: %s", {k: len(v) for k, v in parts.items()})
    return DataBundle(train=source, num_train=len(train_records), augment=augment,
                      splits={"val": parts["val"], "test": parts["test"]}, info=info)


def resolve_root(config) -> str:
    """The configured BraTS training folder, or the built-in synthetic set (generated once into the cache)."""
    d = config.data
    if d.root:
        if not os.path.isdir(d.root):
            raise FileNotFoundError(f"data.root {d.root}: no such directory")
        return d.root
    from gazejax.data.synthetic import brats as synth

    s = d.synthetic
    out = os.path.join(os.path.expanduser(s.dir or "~/.cache/gazejax"),
                       f"synthetic_brats_n{s.cases}_s{s.seed}_{'x'.join(map(str, s.shape))}_g{s.gaze_share:.2f}")
    return synth.generate(out, cases=s.cases, seed=s.seed, shape=tuple(s.shape), gaze_share=s.gaze_share)


def eval_settings(config) -> tuple[str, tuple, tuple | None]:
    """(eval.mode, window, gaze window or None) of the config, checked: what evaluation and prediction run."""
    from gazejax.methods.san_aab import evaluate as eval3d

    e = config.eval
    mode = e.get("mode", "window")
    if mode not in eval3d.EVAL_MODES:
        raise ValueError(f"eval.mode: unknown mode {mode!r}; expected one of {', '.join(eval3d.EVAL_MODES)}")
    if mode == "whole" and (tuple(e.window) or tuple(e.gaze_window)):
        raise ValueError("eval.window / eval.gaze_window apply to eval.mode='window'; clear them for 'whole'")
    return mode, tuple(e.window or config.data.crop_size), tuple(e.gaze_window) or None


def evaluate(predict, records, config, out_dir: str | None = None, stage=None) -> dict:
    from gazejax.methods.san_aab import evaluate as eval3d
    from gazejax.metrics import stats

    e = config.eval
    mode, window, gaze_window = eval_settings(config)
    per_case = []
    for record in records:
        res = eval3d.evaluate_case(predict, record, window, e.overlap, e.batch, config.data.gaze_sigma,
                                   out_dir if (out_dir and e.save_predictions) else None,
                                   gaze_window=gaze_window, mode=mode)
        if len(per_case) >= e.get("figure_cases", 2):  # keep volumes only for the report's figures
            res = {"case_id": res["case_id"], "scores": res["scores"]}
        per_case.append(res)
    metrics: dict[str, float] = {}
    keys = sorted({k for r in per_case for k in r["scores"]})
    for k in keys:
        vals = [r["scores"][k] for r in per_case if k in r["scores"]]
        mean, std = stats.mean_std(vals) if len(vals) > 1 else (float(np.mean(vals)), float("nan"))
        metrics[k], metrics[k + "_std"] = mean, std
    if all(f"dice_{r}" in metrics for r in ("ET", "TC", "WT")):
        metrics["dice_mean"] = float(np.mean([metrics[f"dice_{r}"] for r in ("ET", "TC", "WT")]))
    return {"metrics": metrics, "cases": per_case, "records": records}


def stages(config) -> list[Stage]:
    return [Stage(name="train", epochs=config.epochs, monitor=config.monitor, monitor_mode="max")]
