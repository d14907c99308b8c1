r"""One leaderboard of the gaze-guided chest X-ray methods on identical data (issue 17): EGD-CXR's 3-class task
(Normal / CHF / pneumonia), one patient-level stratified split, one input size (128x128; quick 64x64), the same
synthetic set (720 images of the realistic style at difficulty 0.25: patients differ, findings are graded and
overlap, 2.5 % of labels are flipped; the plain ResNet-50 lands at macro AUROC 0.72 at 64x64: nothing saturates).

  python -m gazejax.experiments --config=configs/cxr_leaderboard.py --grid=leaderboard --quick
  python -m gazejax.experiments --config=configs/cxr_leaderboard.py --grid=leaderboard --shard=0/4 --workdir=/shared/lb

Every cell trains one row's method with its own config file (the demo preset at the common data settings below)
and one seed; `gazejax.experiments.leaderboard` then scores every finished cell the same way through the methods'
`Inference` hooks and writes leaderboard.md / .csv / .png in the workdir (next to the per-method tables.md).

Rows: the plain backbone (cross-entropy, linear head: `configs/ggcam.py:method=plain`), GG-CAM, CXRGazeLearn (its
fusion classifier, stage 3) and its classifying baselines (DenseNet-201, DenseNet-201 + triplet pretraining, MT-UNet),
GazAT and the SSL baselines (SimCLR, BYOL, MoCo v2, McGIP; 10 % label fine-tuning, with the pretraining's linear
probe AUROC from the run's own evaluation) and a random-map control (the plain rows' models, map replaced by
noise), SAN+AAB 2D on EfficientNet-b0, its Table 4 backbone (backbone, +gaze*, +gaze loss, ours; on this 3-class
task with one softmax and cross-entropy instead of Table 4's 5 multi-label sigmoids: `data.label_set="3class"`).
ResNet-50 and EfficientNet-b0 rows where the method lets the backbone change (GG-CAM, plain); CXRGazeLearn is
DenseNet-201 by design. Full size: 3 seeds per row; `--quick`: 8 rows (the ResNet-50 ones, SAN+AAB backbone and
ours), 2 seeds, shorter schedules (the size to run on a 2-core CPU at 64x64 inputs: about 27 minutes, measured
from a fresh clone on a quiet machine).
"""
from __future__ import annotations

import ml_collections

IMAGE_SIZE = {"full": (128, 128), "quick": (64, 64)}  # one input size for every row


def common(size: tuple[int, int]) -> dict:
    """The data settings every cell shares, and the fields that follow the input size in each config file."""
    return {"data.image_size": size, "data.synthetic.images": 720, "data.synthetic.size": (256, 208),
            "data.synthetic.seed": 0, "data.synthetic.style": "realistic", "data.synthetic.difficulty": 0.25,
            "data.split": "70/10/20", "data.test_seed": 0, "data.seed": 0, "data.label_set": "3class",
            "data.dataset": "egd_cxr"}


def per_config(family: str, size: tuple[int, int]) -> dict:
    return {"ggcam": {"data.gaze_grids": {"cam": tuple(s // 32 for s in size)}},
            "cxrgazelearn": {"data.gaze_grids": {"saliency": size}},
            "gazat": {"finetune.label_fractions": (0.1,), "finetune.subset_draws": 1},
            "cxr_san": {"data.gaze_grids": {"san": tuple(s // 16 for s in size), "e4": tuple(s // 32 for s in size)}}
            }.get(family, {})


ROWS = {  # row -> (config file and arguments, exported stage or None = the last)
    "plain_resnet50": ("configs/ggcam.py:method=plain,backbone=resnet50", None),
    "ggcam_resnet50": ("configs/ggcam.py:method=ggcam,backbone=resnet50", None),
    "plain_efficientnet_b0": ("configs/ggcam.py:method=plain,backbone=efficientnet_b0", None),
    "ggcam_efficientnet_b0": ("configs/ggcam.py:method=ggcam,backbone=efficientnet_b0", None),
    "cxrgazelearn": ("configs/cxrgazelearn.py:method=cxrgazelearn", None),
    "dnet201": ("configs/cxrgazelearn.py:method=dnet201", None),
    "dnet201_cl": ("configs/cxrgazelearn.py:method=dnet201_cl", None),
    "mt_unet": ("configs/cxrgazelearn.py:method=mt_unet", None),
    "san_backbone_efficientnet_b0": ("configs/cxr_san.py:method=backbone,backbone=efficientnet_b0", None),
    "san_gaze_star_efficientnet_b0": ("configs/cxr_san.py:method=gaze_star,backbone=efficientnet_b0", None),
    "san_gaze_loss_efficientnet_b0": ("configs/cxr_san.py:method=gaze_loss,backbone=efficientnet_b0", None),
    "san_ours_efficientnet_b0": ("configs/cxr_san.py:method=ours,backbone=efficientnet_b0", None),
    "gazat_resnet50": ("configs/gazat.py:method=gazat,backbone=resnet50,dataset=egd_cxr", "finetune_10pct"),
    "simclr_resnet50": ("configs/gazat.py:method=simclr,backbone=resnet50,dataset=egd_cxr", "finetune_10pct"),
    "byol_resnet50": ("configs/gazat.py:method=byol,backbone=resnet50,dataset=egd_cxr", "finetune_10pct"),
    "moco_resnet50": ("configs/gazat.py:method=moco,backbone=resnet50,dataset=egd_cxr", "finetune_10pct"),
    "mcgip_resnet50": ("configs/gazat.py:method=mcgip,backbone=resnet50,dataset=egd_cxr", "finetune_10pct"),
}
QUICK_ROWS = ("plain_resnet50", "ggcam_resnet50", "cxrgazelearn", "mt_unet", "san_backbone_efficientnet_b0",
              "san_ours_efficientnet_b0", "gazat_resnet50", "simclr_resnet50")
QUICK = {  # shorter schedules of the --quick size, per config file
    "ggcam": {"epochs": 12},
    "cxr_san": {"epochs": 12},
    "cxrgazelearn": {"epochs": 4, "stage_epochs": {"stage1a": 2, "stage1b": 2, "stage3": 2}},
    "gazat": {"pretrain_epochs": 20, "finetune.epochs": 50},  # 20 x 15 steps: SimCLR NT-Xent 4.14 -> ~3.9;
    #                                                            fine-tuning: the paper's 50 epochs (1 step each at 10 %)
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The common data settings (documentation: each cell trains with its row's own config file)."""
    del arg
    return ml_collections.ConfigDict({"common": {k.replace(".", "_"): v
                                                 for k, v in common(IMAGE_SIZE["full"]).items()}})


def _family(config: str) -> str:
    return config.split("/")[-1].split(".py")[0]


def cells(quick: bool = False) -> list[dict]:
    rows, seeds = (QUICK_ROWS, (0, 1)) if quick else (tuple(ROWS), (0, 1, 2))
    size = IMAGE_SIZE["quick" if quick else "full"]
    out = []
    for row in rows:
        config = ROWS[row][0]
        family = _family(config)
        overrides = {**common(size), **per_config(family, size), **(QUICK.get(family, {}) if quick else {})}
        out += [{"row": row, "config": config, "seed": s, **overrides} for s in seeds]
    return out


def get_grid(name: str, quick: bool = False) -> dict:
    """`leaderboard` (see the module docstring); `--quick` for the smaller size."""
    if name != "leaderboard":
        raise ValueError(f"unknown grid {name!r} for configs/cxr_leaderboard.py (leaderboard)")
    grid_cells = cells(quick)
    rows = list(dict.fromkeys(c["row"] for c in grid_cells))
    return {"cells": grid_cells, "tables": [], "title": "Chest X-ray leaderboard" + (" (quick)" if quick else ""),
            "repeat_label": "seeds",
            "leaderboard": {"title": "Chest X-ray leaderboard (synthetic EGD-CXR-format data)" + (
                " - quick size" if quick else ""),
                "note": "Synthetic data: these numbers compare methods on the built-in generator, not on EGD-CXR.",
                "reference": "plain_resnet50", "stages": {r: ROWS[r][1] for r in rows if ROWS[r][1]},
                "controls": {"random_map": ("random", "plain_resnet50")}, "stride": 16,
                "gaze_sigma_dicom": 150.0, "bootstrap": 1000, "classes": ("Normal", "CHF", "pneumonia")}}
