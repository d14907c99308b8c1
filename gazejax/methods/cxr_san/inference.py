"""How `gazejax.predict` applies an exported SAN + AAB (or Table 4 baseline) model to new radiographs: the five
per-finding sigmoids of `spec.evaluate` (the 3-class softmax for data.label_set "3class") and, for the variants
that learn gaze, their predicted gaze map (`spec.gaze_map`)."""
from __future__ import annotations

import numpy as np

from gazejax.data.cxr import files
from gazejax.engine.api import Inference
from gazejax.methods.cxr_san.spec import gaze_map, gaze_stride, is_multiclass, label_names, probabilities

MAP_NAMES = {  # config.method -> what its gaze output is
    "ours": "predicted gaze (sigmoid of SAN's gaze logits, Eq. 4; 1/16 of the input)",
    "gaze_star": "predicted gaze (sigmoid of the E4 gaze head, Eq. 4; 1/32 of the input)",
    "gaze_loss": "predicted gaze distribution (softmax of the E4 gaze head over the grid; 1/32 of the input)",
}


def run(predict, images: np.ndarray, config, stage=None) -> dict:
    """images float32 [B, H, W, 1] -> {"probs": float64 [B, K] per-finding sigmoids, or the 3-class softmax (as
    `spec.evaluate`), "map": float32 [B, h, w] predicted gaze (`gaze_map`) for the methods trained on gaze, else
    None}."""
    del stage
    out = predict(images)
    probs = probabilities(np.asarray(out["logits"], np.float32), config)  # evaluate stacks float32 logits
    gaze = out.get("gaze")
    if gaze is None or gaze_stride(config.method) is None:  # backbone_matched's SAN never saw gaze
        return {"probs": probs, "map": None}
    return {"probs": probs, "map": gaze_map(np.asarray(gaze, np.float32), config.method).astype(np.float32)}


def map_name(config, stage=None) -> str:
    del stage
    return MAP_NAMES.get(config.method, "") if gaze_stride(config.method) is not None else ""


INFERENCE = Inference(kind="image", preprocessing=files.preprocessing_spec, labels=label_names,
                      run=run, multilabel=lambda config: not is_multiclass(config), map_name=map_name)
