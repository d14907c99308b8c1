"""How `gazejax.predict` applies an exported GG-CAM (or plain) model to new radiographs: the class probabilities of
`spec.evaluate` and the CAM of the predicted class (Eq. 4; the plain network's is Eq. 4 of its linear head)."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from gazejax.data.cxr import files
from gazejax.engine.api import Inference
from gazejax.methods.ggcam.spec import CLASSES, VARIANTS


def run(predict, images: np.ndarray, config, stage=None) -> dict:
    """images float32 [B, H, W, 1] -> {"probs": float64 [B, 3] softmax (as `spec._run_split`), "map": float32
    [B, H/32, W/32] the CAM Omega of each image's arg-max class}."""
    del stage
    out = predict(images)
    probs = softmax(np.asarray(out["logits"], np.float64), axis=1)
    cam = out.get("cam")
    if cam is None:
        return {"probs": probs, "map": None}
    predicted = np.argmax(probs, axis=1)[:, None, None, None]
    return {"probs": probs, "map": np.take_along_axis(np.asarray(cam, np.float32), predicted, axis=3)[..., 0]}


def map_name(config, stage=None) -> str:
    """Both variants output a CAM ("cam" [B, h, w, 3]): GG-CAM's CAM layer, or Eq. 4 of plain's linear head."""
    del stage
    if config.method not in VARIANTS:
        raise ValueError(f"ggcam: unknown method {config.method!r}; choose one of {', '.join(VARIANTS)}")
    layer = "the CAM layer" if config.method == "ggcam" else "the linear head"
    return f"CAM of the predicted class (Eq. 4, {layer}; 1/32 of the input)"


INFERENCE = Inference(kind="image", preprocessing=files.preprocessing_spec, labels=lambda config: tuple(CLASSES),
                      run=run, multilabel=lambda config: False, map_name=map_name)
