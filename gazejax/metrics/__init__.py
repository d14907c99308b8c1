"""Evaluation metrics on numpy arrays, returning Python floats: segmentation (Dice, HD95, BraTS regions), saliency
(MIT benchmark), classification (AUROC, accuracy, F1) and stats (ANOVA, paired t-test).

Submodules are imported on first attribute access, so `import gazejax.metrics` stays free of scipy.
"""

import importlib

__all__ = ["classification", "saliency", "segmentation", "stats"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
