"""How `gazejax.predict` applies an exported SAN+AAB model to a new BraTS case: the preprocessing spec it stores and
the inference of one brain box, the same `evaluate.infer_case` call as the run's own test evaluation."""
from __future__ import annotations

import numpy as np

from gazejax.data.brats.reader import MODALITIES
from gazejax.data.brats.records import SAN_STRIDE
from gazejax.engine.api import Inference
from gazejax.methods.san_aab import evaluate as eval3d
from gazejax.methods.san_aab.spec import eval_settings

REGIONS = ("ET", "TC", "WT")


def preprocessing(config) -> dict:
    """What turns four NIfTI files into the model's input, and how outputs return to the input's geometry."""
    mode, window, gaze_window = eval_settings(config)
    e = config.eval
    return {"kind": "volume", "modalities": list(MODALITIES),
            "geometry": "array order as stored: no resampling or reorientation; outputs in the input's shape, "
                        "affine and header",
            "crop": "box of voxels non-zero in any modality (zeros outside it in every output)",
            "normalisation": "per modality: brain (non-zero) voxels clipped to their 1st-99th percentile, then min-max "
                             "to [0, 1]; background 0 (open_brats2020)",
            "eval_mode": mode, "window": list(window) if mode == "window" else None,
            "overlap": float(e.overlap) if mode == "window" else None, "window_batch": int(e.batch),
            "gaze_window": list(gaze_window) if gaze_window and mode == "window" else None,
            "pad_multiple": SAN_STRIDE, "threshold": 0.5,
            "regions": {"ET": [4], "TC": [1, 4], "WT": [1, 2, 4]}, "labels": [0, 1, 2, 4],
            "gaze_grid": f"1/{SAN_STRIDE} of the zero-padded brain box" if config.method != "backbone" else None}


def run(predict, image: np.ndarray, config, stage=None) -> dict:
    """Sigmoid region probabilities of the brain box `image` [X, Y, Z, 4] and the SAN gaze grid (or None)."""
    del stage
    mode, window, gaze_window = eval_settings(config)
    e = config.eval
    seg_prob, gaze_prob, frame = eval3d.infer_case(predict, image, mode, window, e.overlap, e.batch, gaze_window)
    x, y, z = image.shape[:3]
    return {"seg_prob": seg_prob[:x, :y, :z], "gaze_prob": None if gaze_prob is None else gaze_prob[..., 0],
            "gaze_frame": tuple(frame)}


def map_name(config, stage=None) -> str:
    del stage
    if config.method == "backbone":
        return ""
    if config.method == "ours_no_gaze":
        return "SAN map trained on the down-sampled whole-tumour mask (not gaze), 1/16 grid"
    return "SAN predicted gaze (sigmoid), 1/16 grid"


INFERENCE = Inference(kind="volume", preprocessing=preprocessing, labels=lambda config: REGIONS, run=run,
                      map_name=map_name)
