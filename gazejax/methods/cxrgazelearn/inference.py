"""How `gazejax.predict` applies an exported CXRGazeLearn model (or a baseline's) to new radiographs: the class
probabilities of the exported stage's head and its map, both as `spec.evaluate` computes them for that stage."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

from gazejax.data.cxr import files
from gazejax.engine.api import Inference
from gazejax.methods.cxrgazelearn import spec
from gazejax.methods.cxrgazelearn.spec import CLASSES, saliency_distribution


def _head(config, stage) -> str:
    """The outputs key of the stage's classification logits; ValueError for a stage without one."""
    opts = spec._options(config, stage)
    if not opts.get("head"):
        name = stage.name if stage is not None else spec._plan(config)[-1]
        heads = [s.name for s in spec.stages(config) if s.options.get("head")]
        raise ValueError(f"cxrgazelearn: stage {name} has no classification head; export a stage with one "
                         f"({', '.join(heads) or 'none in method ' + repr(config.method)})")
    return str(opts["head"])


def run(predict, images: np.ndarray, config, stage=None) -> dict:
    """images float32 [B, H, W, 1] -> {"probs": float64 [B, 3] softmax of the stage's head, "map": float32 the
    saliency distribution [B, H, W] (stages with saliency), else Grad-CAM [B, H/32, W/32] of the predicted class
    (the DenseNet head), else None}."""
    head, saliency = _head(config, stage), bool(spec._options(config, stage).get("saliency"))
    out = predict(images)
    probs = softmax(np.asarray(out[head], np.float64), axis=1)
    if saliency:
        return {"probs": probs, "map": saliency_distribution(out["saliency"]).astype(np.float32)}
    if head == "dnet_logits" and out.get("gradcam") is not None:
        predicted = np.argmax(probs, axis=1)[:, None, None, None]
        cam = np.take_along_axis(np.asarray(out["gradcam"], np.float32), predicted, axis=3)[..., 0]
        return {"probs": probs, "map": cam}
    return {"probs": probs, "map": None}


def map_name(config, stage=None) -> str:
    head = _head(config, stage)
    if spec._options(config, stage).get("saliency"):
        return "predicted gaze saliency (softmax over the input grid, sums to 1)"
    if head == "dnet_logits":
        return "Grad-CAM of the predicted class (DenseNet head at norm5; 1/32 of the input)"
    return ""


INFERENCE = Inference(kind="image", preprocessing=files.preprocessing_spec, labels=lambda config: tuple(CLASSES),
                      run=run, multilabel=lambda config: False, map_name=map_name)
