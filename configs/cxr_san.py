r"""SAN + AAB for 5-finding chest X-ray classification (Huang et al., BMVC 2021, Section 4.2, Table 4).

Demo (synthetic EGD-CXR-format data generated on first use; about 3 minutes on a shared 2-core CPU):
  python -m gazejax.main --config=configs/cxr_san.py:method=ours --workdir=/tmp/cxrsan_ours
  python -m gazejax.main --config=configs/cxr_san.py:method=backbone --workdir=/tmp/cxrsan_backbone
Apply a trained model to new radiographs (predictions.csv; --maps adds SAN's gaze maps):
  python -m gazejax.export --workdir=/tmp/cxrsan_ours --out=/tmp/cxrsan_model
  python -m gazejax.predict --model=/tmp/cxrsan_model --input=/path/to/dicoms --output=/tmp/cxrsan_pred --maps
Real data (EGD-CXR + its MIMIC-CXR DICOMs) with the paper's settings:
  python -m gazejax.main --config=configs/cxr_san.py:preset=paper,method=ours,ratio=0.2,seed=0 \
      --config.data.root=/path/to/egd-cxr --config.data.mimic_root=/path/to/mimic-cxr
Table 4 (4 methods x ratios 0.2/0.3/0.5/0.7 x 5 seeds; the test split is fixed, seeds change the training):
  python -m gazejax.experiments --config=configs/cxr_san.py:preset=paper --grid=table4

Arguments (`configs/cxr_san.py:key=val,...`): preset=demo|paper, method=backbone|gaze_star|gaze_loss|ours (Table
4's Backbone, +gaze*, +gaze loss, ours) or backbone_matched (not in the paper: the "ours" network trained without
gaze, a backbone row with ours' exact parameter count), backbone=efficientnet_b0|mobilenet_v2|resnet18,
dataset=egd_cxr|reflacx, ratio (share of the training part: 0.2/0.3/0.5/0.7 in Table 4; 1.0 = all of it), seed.

Table 4 reports "the average of the best 30 epochs": every validation also scores the test split
(`track_test`), and the report gives (a) the mean test AUROC of the `best_n` evaluations with the best validation
AUROC and (b) the mean of the `best_n` best test AUROCs, next to the best checkpoint's test AUROC (see
`gazejax.methods.cxr_san.report`).
"""
from __future__ import annotations

import ml_collections

from gazejax.engine.config_args import add_engine_fields, parse_arg

METHODS = ("backbone", "backbone_matched", "gaze_star", "gaze_loss", "ours")
BACKBONES = ("efficientnet_b0", "mobilenet_v2", "resnet18")
DATASETS = ("egd_cxr", "reflacx")
RATIOS = (0.2, 0.3, 0.5, 0.7)
SEEDS = tuple(range(5))


def gaze_grids(image_size) -> dict[str, tuple[int, int]]:
    """Both gaze targets, so that a grid cell may switch `method` alone: "san" at stride 16 (SAN's map, ours),
    "e4" at stride 32 (the gaze head on E4: gaze_star, gaze_loss)."""
    return {"san": tuple(int(s) // 16 for s in image_size), "e4": tuple(int(s) // 32 for s in image_size)}


def _data(dataset: str) -> ml_collections.ConfigDict:
    """The data fields (paper preset) of a config for `dataset`."""
    d = ml_collections.ConfigDict()
    d.dataset = dataset                     # egd_cxr (MIMIC-CXR-gaze, the paper's 1083 images) | reflacx
    d.root = ""                             # data set folder; "" = built-in synthetic set in its layout
    d.mimic_root = ""                       # root the data set's image paths are relative to (MIMIC-CXR DICOMs)
    d.cache_dir = ""                        # resized-image cache; "" = ~/.cache/gazejax/cxr_<hash of root>
    d.image_size = (224, 224)               # EfficientNet-b0's native input (the supplementary's size is unknown)
    d.gaze_grids = gaze_grids(d.image_size)  # targets at SAN's 1/16 ("san") and E4's 1/32 ("e4") grids
    d.gaze_kind = "gaussian"                # "an isotropic gaussian on each fixation point", duration-weighted
    d.gaze_normalize = "max"                # maps in [0, 1]: the BCE of Eq. 4 needs targets in [0, 1]
    d.gaze_sigma = 150.0 if d.dataset == "egd_cxr" else "dataset"  # EGD-CXR's 150 DICOM px; REFLACX 1 degree
    d.reader = {}                           # reader options; EGD-CXR default = the pre-analysed fixations.csv
    d.label_set = "5label"                  # Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
    d.label_policy = ""                     # "" = uncertain -> 1, blank -> 0 (CheXpert U-Ones)
    d.split = "70/10/20"                    # train / validation / test shares, patient-level, label-stratified
    d.ratio = 1.0                           # share of the training part used (Table 4: 0.2 / 0.3 / 0.5 / 0.7)
    d.seed = 0                              # validation draw; fixed so that all runs of a sweep share one split
    d.test_seed = 0                         # test draw; never changes with training seeds
    d.augment = {"enabled": False}          # no augmentation is mentioned; True = AugmentConfig defaults
    d.num_threads = 2                       # Grain reader threads
    d.prefetch = 2                          # Grain prefetch buffer (batches)
    d.synthetic = s = ml_collections.ConfigDict()
    s.dir = ""                              # where the synthetic set is generated; "" = ~/.cache/gazejax
    s.style = "basic"                       # basic (README demo numbers) | realistic (patients vary, graded findings)
    s.difficulty = 0.5                      # realistic only: 0 easy .. 1 hard (gazejax/data/synthetic/cxr_realistic.py)
    s.label_noise = None                    # realistic only: share of flipped class labels; None = the difficulty's
    s.images = 1083                         # as many images as MIMIC-CXR-gaze (EGD-CXR)
    s.seed = 0
    s.size = (512, 416)                     # synthetic DICOM size (gaze_sigma is scaled by height / 3056 for it)
    return d


def _model(backbone: str) -> ml_collections.ConfigDict:
    """The model fields (paper preset) of a config for `backbone`."""
    m = ml_collections.ConfigDict()
    m.backbone = backbone                   # efficientnet_b0 (paper), mobilenet_v2, resnet18 (supplementary)
    m.efficientnet_width_mult = 1.0         # EfficientNet channel multiplier (torchvision 1.0)
    m.efficientnet_depth_mult = 1.0         # EfficientNet depth multiplier (torchvision 1.0)
    m.mobilenet_width_mult = 1.0            # MobileNet-v2 channel multiplier (torchvision 1.0)
    m.resnet_width = 64                     # ResNet base width (torchvision 64)
    m.san_width = 32                        # SAN conv groups: san_width, 2 * san_width channels (M2)
    m.aab_heads = 4                         # AAB attention heads
    m.aab_head_dim = 64                     # c_h = 64 (Sec. 3.2)
    m.aab_ffn_mult = 2                      # AAB feed-forward hidden width = aab_ffn_mult x refined channels
    m.aab_site = "stride32"                 # AAB on the 320-ch stride-32 map before EffNet's 1x1 final conv (+0.68M
                                            # params); "head_map" = on the 1280-ch final_conv (+7.57M > backbone)
    m.dropout = -1.0                        # head dropout; < 0 = the backbone's own (EffNet/MobileNet 0.2, ResNet 0)
    m.gaze_head_std = 0.01                  # +gaze* / +gaze loss gaze-head kernel init std (RetinaNet); 0 = kaiming
                                            # fan_out (std 1.4: quick leaderboard, seeds 0/1, AUROC 0.745/0.717
                                            # vs 0.744/0.822 at 0.01, gaze CC 0.24/0.20 vs 0.29/0.36)
    m.dtype = "float32"                     # compute dtype (params stay float32)
    m.conv_impl = "auto"                    # conv formulation (models/conv_impl.py); auto = by backend
    m.init_from = ""                        # converted checkpoint to start from (python -m gazejax.models.convert)
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, preset="demo", method="ours", backbone="efficientnet_b0", dataset="egd_cxr", ratio=None,
                     seed=0)
    for key, allowed in (("method", METHODS), ("backbone", BACKBONES), ("dataset", DATASETS)):
        if args[key] not in allowed:
            raise ValueError(f"configs/cxr_san.py: {key} must be one of {', '.join(allowed)}, got {args[key]!r}")
    c = ml_collections.ConfigDict()
    c.preset = args["preset"]
    c.method_family = "cxr_san"             # gazejax.methods.<family>
    c.method = args["method"]               # Table 4 row: backbone | gaze_star (+gaze*) | gaze_loss | ours;
                                            # backbone_matched = ours' network without gaze (parameter control)
    c.seed = int(args["seed"])              # parameter init / shuffling seed (the repeats of the table4 grid)

    c.data = d = _data(args["dataset"])
    c.model = _model(args["backbone"])

    c.loss = ml_collections.ConfigDict()
    c.loss.cls = 1.0                        # w1 on the multi-label BCE (Sec. 3.3: CE replaces L_seg)
    c.loss.gaze = 0.5                       # w2 on the gaze loss (Eq. 4 BCE; KL for gaze_loss), as Sec. 4.1

    c.optim = o = ml_collections.ConfigDict()
    o.name = "ranger"                       # Sec. 4.1's optimiser (the CXR details are in the supplementary)
    o.lr = 1e-4                             # initial learning rate (Sec. 4.1)
    o.decay_start_epoch = 100               # cosine decay after epoch 100 of 210 (Sec. 4.1)
    o.weight_decay = 0.0

    c.batch_size = 16                       # global batch size
    c.epochs = 210                          # Sec. 4.1's schedule
    c.eval_every_epochs = 1                 # one validation (and test evaluation) per epoch: "best 30 epochs"
    c.monitor = "val/auroc"                 # mean of the 5 per-class AUROCs on the validation split
    c.track_test = True                     # log test/* at every validation, for the best-N-epochs averages
    c.best_n = 30                           # Table 4: "the average of the best 30 epochs"
    c.log_every_steps = 10
    c.num_devices = 0                       # 0 = all visible devices

    c.eval = e = ml_collections.ConfigDict()
    e.batch = 16                            # images per inference call
    e.figure_images = 3                     # test images with gaze kept for the report's gaze figures

    add_engine_fields(c)                    # checkpoint / distributed / profile defaults

    if c.preset == "demo":
        _demo(c)
    elif c.preset != "paper":
        raise ValueError(f"configs/cxr_san.py: unknown preset {c.preset!r} (demo | paper)")
    if args["ratio"] is not None:
        d.ratio = float(args["ratio"])
    return c


LABELS = {"backbone": "Backbone", "backbone_matched": "Backbone, param-matched", "gaze_star": "+gaze*",
          "gaze_loss": "+gaze loss", "ours": "ours"}
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion")  # metric-key spelling


def _percent(*keys: str) -> dict[str, float]:
    return {k: 100.0 for k in keys}


def get_grid(name: str) -> dict:
    """Named sweeps for `python -m gazejax.experiments --config=configs/cxr_san.py --grid=NAME`.

    table4: Table 4's 4 methods plus the parameter-matched backbone (ours' network without gaze) x ratios (0.2,
    0.3, 0.5, 0.7) x 5 seeds. Tables (test AUROC in %, mean (std) over seeds): mean AUROC per method x ratio three
    ways (the `best_n` evaluations with the best validation AUROC, the best checkpoint, the `best_n` best test
    evaluations), then Table 4's layout (ratio, method; average and per class), then each method's parameter count.
    """
    if name != "table4":
        raise ValueError(f"configs/cxr_san.py: unknown grid {name!r} (table4)")
    cells = [{"method": m, "data.ratio": r, "seed": s} for m in METHODS for r in RATIOS for s in SEEDS]
    modes = (("auroc_best_val_n", "test AUROC (%), mean of the best-N evaluations by validation AUROC"),
             ("auroc", "test AUROC (%) of the best checkpoint (by validation AUROC)"),
             ("auroc_best_test_n", "test AUROC (%), mean of the N best test evaluations (optimistic)"))
    tables = [{"title": f"Mean {title}", "row": "method", "col": "data.ratio", "row_labels": LABELS,
               "metrics": ((key, "mean AUROC"),), "scale": _percent(key)} for key, title in modes]
    per_class = tuple((f"auroc_{f}_best_val_n", f.replace("_", " ")) for f in FINDINGS)
    table4 = (("auroc_best_val_n", "Average"),) + per_class
    tables.append({"title": "Table 4 layout: test AUROC (%), mean of the best-N evaluations by validation AUROC",
                   "row": ("data.ratio", "method"), "title_row": "ratio, method", "stats": False,
                   "row_labels": {(r, m): f"{r} {LABELS[m]}" for r in RATIOS for m in METHODS},
                   "metrics": table4, "scale": _percent(*(k for k, _ in table4))})
    tables.append({"title": "Parameters (millions) per method; the param-matched backbone has ours' count",
                   "row": "method", "row_labels": LABELS, "stats": False, "scale": {"params_total": 1e-6},
                   "digits": {"params_total": 3}, "metrics": (("params_total", "parameters (M)"),)})
    return {"cells": cells, "tables": tables, "title": f"SAN+AAB chest X-ray {name}", "repeat_label": "seeds"}


def _demo(c: ml_collections.ConfigDict) -> None:
    """128x96 images (SAN grid 8x6, E4 4x3), an EfficientNet-b0 at width/depth 0.25 (the AAB on its 80-channel
    stride-32 map; final_conv has 320 channels), 300 synthetic images (210 train / 30 val / 60 test), 15 epochs of
    Adam with a cosine decay after epoch 10; the best-N averages use N = 5 of the 15 evaluations."""
    c.data.image_size = (128, 96)           # about the synthetic 256x208 radiographs' aspect, multiples of 32
    c.data.gaze_grids = gaze_grids(c.data.image_size)
    c.data.synthetic.images = 300
    c.data.synthetic.size = (256, 208)
    c.model.efficientnet_width_mult = 0.25
    c.model.efficientnet_depth_mult = 0.25
    c.model.mobilenet_width_mult = 0.25
    c.model.resnet_width = 8
    c.model.san_width = 8
    c.model.aab_heads = 2
    c.model.aab_head_dim = 16
    c.optim.name = "adam"                   # Ranger's RAdam warm-up outlasts a demo
    c.optim.lr = 3e-3
    c.optim.decay_start_epoch = 10
    c.epochs = 15
    c.best_n = 5
    c.eval.batch = 32
