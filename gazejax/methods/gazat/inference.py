"""How `gazejax.predict` applies an exported GazAT fine-tuned model (or a baseline's) to new radiographs: the
class or finding probabilities of `evaluate.evaluate` and, as its alignment scoring computes them, Grad-CAM of the
predicted class (CNNs) or the combined model attention (ViTs)."""
from __future__ import annotations

import numpy as np

from gazejax.data.cxr import files
from gazejax.data.cxr import labels as cxr_labels
from gazejax.engine.api import Inference
from gazejax.methods.gazat import evaluate
from gazejax.methods.gazat.spec import is_multilabel, stages, task
from gazejax.models.ssl import is_vit


def _check_stage(config, stage) -> None:
    """The pretraining has no trained classifier (its evaluation fits a linear probe): ValueError."""
    if task(config, stage) == "pretrain":
        name = stage.name if stage is not None else "pretrain"
        tuned = [s.name for s in stages(config) if task(config, s) != "pretrain"]
        raise ValueError(f"gazat: stage {name} has no trained classifier (its evaluation fits a linear probe on "
                         f"frozen features); export a fine-tuning stage instead ({', '.join(tuned)})")


def run(predict, images: np.ndarray, config, stage=None) -> dict:
    """images float32 [B, H, W, 1] -> {"probs": float64 [B, K] (`evaluate.probabilities`: softmax, or sigmoids
    for multi-label findings), "map": float32 in [0, 1], min-max per image: ReLU(CAM) of the arg-max class
    [B, H/32, W/32] (CNN), else the layers' attention combined at the finest layer grid [B, h, w]}."""
    _check_stage(config, stage)
    out = predict(images)
    probs = evaluate.probabilities(np.asarray(out["logits"]), is_multilabel(config))
    outputs = {"attention": {k: np.asarray(v) for k, v in out["attention"].items()}}
    if out.get("cam") is not None:
        outputs["cam"] = np.asarray(out["cam"])
    grid = tuple(int(g) for g in config.eval.saliency_grid)
    maps = evaluate.model_maps(outputs, grid, np.argmax(probs, axis=1))  # [1]: each map on its own grid
    return {"probs": probs, "map": np.asarray(maps["gradcam_" if "gradcam_" in maps else "attn_"][1], np.float32)}


def map_name(config, stage=None) -> str:
    _check_stage(config, stage)
    if is_vit(config.model.backbone):
        return "model attention, layers combined (min-max normalised mean at the finest layer grid)"
    return "Grad-CAM of the predicted class (ReLU of the CAM, min-max normalised; at the backbone's last feature map)"


INFERENCE = Inference(kind="image", preprocessing=files.preprocessing_spec,
                      labels=lambda config: tuple(cxr_labels.label_names(config.data.label_set)), run=run,
                      multilabel=is_multilabel, map_name=map_name)
