"""Model registry: `build(name, **kwargs)` returns a Flax Linen module chosen by name.

Each entry points at `module:factory`; modules are imported lazily so that building one model never imports the
others. Backbone names follow torchvision so that `build(name, num_classes=1000)` matches its parameter count.
"""
from __future__ import annotations

import importlib

import flax.linen as nn

_REGISTRY: dict[str, str] = {
    # 3D segmentation (SAN+AAB, BraTS)
    "equiunet": "gazejax.models.unet3d:EquiUnet",
    "gaze_segmenter": "gazejax.models.segmenter:GazeSegmenter",
    "nnunet3d": "gazejax.models.nnunet3d:NNUNet3D",
    "dmfnet": "gazejax.models.dmfnet:DMFNet",
    # 2D backbones (torchvision-compatible)
    "resnet18": "gazejax.models.resnet:resnet18",
    "resnet50": "gazejax.models.resnet:resnet50",
    "densenet201": "gazejax.models.densenet:densenet201",
    "efficientnet_b0": "gazejax.models.efficientnet:efficientnet_b0",
    "efficientnet_v2_s": "gazejax.models.efficientnet:efficientnet_v2_s",
    "mobilenet_v2": "gazejax.models.mobilenet:mobilenet_v2",
    "vit_b_16": "gazejax.models.vit:vit_b_16",
    "ggcam": "gazejax.models.cam:GGCAMModel",  # 2D backbone + CAM layer + 3 scalars (GG-CAM, Zhu et al.)
    "linear_head_classifier": "gazejax.models.cam:LinearHeadClassifier",  # GG-CAM's "standard" row: GAP + linear
    "san_aab_classifier": "gazejax.models.classifier2d:SANAABClassifier",  # SAN + AAB in 2D (Huang et al. Table 4)
    # GazAT and its SSL baselines: online/target encoders, projector, predictor, queue, classifier
    "ssl": "gazejax.models.ssl:SSLModel",
    # CXRGazeLearn (Qiu et al.) and its baselines
    "saliency_unet": "gazejax.models.saliency_unet:SaliencyUNet",  # Res_SE-UNet / UNet_S
    "mt_unet": "gazejax.models.saliency_unet:MTUNet",
    "densenet_encoder": "gazejax.models.saliency_unet:DenseNetEncoder",  # DNet201(-CL)
    "cxrgazelearn": "gazejax.models.saliency_unet:CXRGazeLearnNet",
}


def names() -> list[str]:
    """All registered model names."""
    return sorted(_REGISTRY)


def register(name: str, target: str) -> None:
    """Registers `module:factory` under `name` (used by methods that add models)."""
    _REGISTRY[name] = target


def build(name: str, **kwargs) -> nn.Module:
    """Builds the model registered as `name` with constructor keyword arguments `kwargs`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    module_name, attr = _REGISTRY[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**kwargs)
