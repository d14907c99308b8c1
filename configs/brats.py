r"""SAN + AAB on BraTS 2020 (Huang et al., BMVC 2021, Section 4.1).

Demo (synthetic BraTS-format data generated on first use; a few minutes on a 2-core CPU):
  python -m gazejax.main --config=configs/brats.py
Apply the trained model to new cases (label maps in each input's geometry; see README "Use a trained model"):
  python -m gazejax.export --workdir=RUN --out=/tmp/brats_model
  python -m gazejax.predict --model=/tmp/brats_model --input=/path/to/cases --output=/tmp/brats_pred [--tta]
Leaderboard of every 3D variant (quick: the EquiUnet variants at the demo preset, 3 folds, ~20 min on 2 cores):
  python -m gazejax.experiments --config=configs/brats.py --grid=leaderboard --quick
Real data with the paper's settings:
  python -m gazejax.main --config=configs/brats.py:preset=paper,method=ours,ratio=0.2,fold=0 \
      --config.data.root=/path/to/MICCAI_BraTS2020_TrainingData
One volume split along depth over 4 devices (4 forced CPU devices here; on GPUs / TPUs drop XLA_FLAGS), with
crops or with whole brain boxes (README "Spatial partitioning"):
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m gazejax.main --config=configs/brats.py \
      --config.mesh.spatial=4 --config.batch_size=1 [--config.data.whole_volume=True --config.eval.mode=whole]

Arguments (`configs/brats.py:key=val,...`): preset=demo|paper, method=backbone|ours|gaze_star|san_star|
ours_no_gaze|ours_surv, ratio (share of the training cases with gaze: 0.2/0.3/0.5/0.7 in the paper), fold (0-4),
gaze=expert|non_expert|all, seed.

Paper preset vs demo preset, where they differ in protocol (each field's comment says more):
  data.ratio_pool  preferred (paper: ratios of the gaze-annotated cases) | demo: all (keeps its earlier numbers)
  data.augment     open_brats2020 (one gate, scalar scale, always transpose + flip) | demo: per_step
  eval.mode        whole (one pass over the brain box padded to 16, as open_brats2020) | demo: window
  model.aab_*      4 heads x 16 = c_h 64, Eq. 1 scaled by sqrt(64) | demo: 2 x 16, per-head sqrt(16)
"""
from __future__ import annotations

import ml_collections

from gazejax.engine.config_args import add_engine_fields, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, preset="demo", method="ours", ratio=None, fold=0, gaze="expert", seed=0)
    c = ml_collections.ConfigDict()
    c.preset = args["preset"]
    c.method_family = "san_aab"             # gazejax.methods.<family>
    c.method = args["method"]               # Section 4.1 variant
    c.seed = int(args["seed"])              # parameter init / shuffling / augmentation seed

    c.data = d = ml_collections.ConfigDict()
    d.root = ""                             # MICCAI_BraTS2020_TrainingData folder; "" = built-in synthetic set
    d.gaze_dir = ""                         # folder of <case_id>_fixations.csv; "" = <root>/gaze
    d.skip_incomplete = False               # a case without *_seg.nii.gz: error (False) or skipped with a warning
    d.cache_dir = ""                        # decoded-volume cache; "" = ~/.cache/gazejax/brats_<hash of root>
    d.gaze_readers = args["gaze"]           # whose fixations supervise SAN: expert | non_expert | all (Table 2)
    d.gaze_sigma = 10.0                     # Gaussian width per fixation, voxels of the original image ("kernel 10")
    d.num_folds = 5                         # 5-fold cross-validation, as the paper
    d.fold = int(args["fold"])              # which fold is the test set
    d.split_seed = 0                        # fixed across methods so every method sees identical splits
    d.val_fraction = 0.1                    # share of non-test cases held out for model selection
    d.ratio = 1.0                           # share of the ratio pool trained on (paper: 0.2 / 0.3 / 0.5 / 0.7)
    d.ratio_pool = "preferred"              # preferred: ratio of the gaze-annotated training cases ("a part of
                                            # training data that have collected gaze data"); all: of every case
    d.crop_size = (128, 128, 128)           # random pad/crop size (open_brats2020)
    d.whole_volume = False                  # train on each whole brain box, zero-padded to one shape (the largest
                                            # box, a multiple of 16; X = Y) instead of crop_size crops; affordable
                                            # with --config.mesh.spatial=N (README "Spatial partitioning")
    d.augment = "open_brats2020"            # open_brats2020: one p-gated block (scalar scale, noise, transpose,
                                            # flip); per_step: each step gated alone (transforms3d.augment)
    d.augment_p = 0.5                       # augmentation probability (open_brats2020 DataAugmenter p=0.5)
    d.num_threads = 2                       # Grain reader threads
    d.prefetch = 4                          # Grain prefetch buffer (batches)
    d.synthetic = s = ml_collections.ConfigDict()
    s.dir = ""                              # where the synthetic set is generated; "" = ~/.cache/gazejax
    s.cases = 369                           # as many cases as the real training set
    s.seed = 0
    s.shape = (240, 240, 155)               # the real volume shape
    s.gaze_share = 180 / 369                # cases with gaze: 180 of 369 in the paper

    c.model = m = ml_collections.ConfigDict()
    m.backbone = "equiunet"                 # equiunet | nnunet | dmfnet (Table 3)
    m.width = 48                            # EquiUnet base width (48/96/192/384)
    m.nnunet_width = 32                     # nnU-Net base width (32 ... 320)
    m.dmfnet_width = 128                    # DMFNet channels c (c/4 stem; c, 2c, 3c)
    m.deep_supervision = False              # open_brats2020 option
    m.san_width = 32                        # SAN conv-group widths: san_width, 2 * san_width
    m.aab_heads = 4                         # AAB attention heads (the paper gives no count)
    m.aab_head_dim = 16                     # channels per head: heads x 16 = c_h = 64, the Q/K/V width (Sec. 3.2)
    m.aab_scale_dim = 64                    # Eq. 1 divides Q K^T by sqrt(c_h = 64); 0 = per-head sqrt(head_dim)
    m.gaze_star_attention = "feature"       # +gaze* soft attention: feature (1+g)*F before the head, train+test;
                                            # output p*(1+g)/2 at test; gate p*g at test (old, not scale-preserving)
    m.gaze_star_prior = 0.1                 # +gaze* map starts at this mean (logit offset; RetinaNet prior init)
    m.gaze_star_head_std = 0.01             # +gaze* gaze-head kernel init std (RetinaNet's prior-init recipe:
                                            # small weights, bias at the prior); 0 = kaiming fan_out (std 1.4)
    m.dtype = "float32"                     # compute dtype (params stay float32)
    m.conv_impl = "auto"                    # conv formulation (models/conv_impl.py); auto = by backend
    m.init_from = ""                        # converted checkpoint to start from (python -m gazejax.models.convert)

    c.loss = ml_collections.ConfigDict()
    c.loss.seg = 1.0                        # w1
    c.loss.gaze = 0.5                       # w2
    c.loss.survival = 1.0                   # weight of the survival cross-entropy (ours_surv)

    c.optim = o = ml_collections.ConfigDict()
    o.name = "ranger"                       # RAdam + Lookahead(k=6, alpha=0.5) + gradient centralisation
    o.lr = 1e-4                             # initial learning rate
    o.decay_start_epoch = 100               # cosine decay after epoch 100
    o.weight_decay = 0.0

    c.batch_size = 1                        # global batch size
    c.epochs = 210
    c.eval_every_epochs = 10                # validation (and best-checkpoint selection) period
    c.monitor = "val/dice_mean"             # mean of ET/TC/WT Dice on the validation split
    c.log_every_steps = 10
    c.num_devices = 0                       # 0 = all visible devices

    c.eval = e = ml_collections.ConfigDict()
    e.mode = "whole"                        # whole: one pass over the brain box padded to a multiple of 16
                                            # (open_brats2020); window: sliding windows (GroupNorm as in training)
    e.window = ()                           # window mode: sliding-window size; () = data.crop_size
    e.overlap = 0.5                         # window mode: window overlap
    e.gaze_window = ()                      # window mode: window of a separate gaze pass; () = the seg windows
    e.batch = 2                             # windows per inference call
    e.save_predictions = True               # test-split label maps as NIfTI in the original geometry
    e.figure_cases = 2                      # cases kept in memory for report figures

    add_engine_fields(c)                    # checkpoint / distributed / profile defaults

    if c.preset == "demo":
        _demo(c)
    elif c.preset != "paper":
        raise ValueError(f"unknown preset {c.preset!r} (demo | paper)")
    if args["ratio"] is not None:
        d.ratio = float(args["ratio"])
    return c


RATIOS = (0.2, 0.3, 0.5, 0.7)
FOLDS = tuple(range(5))
DICE = (("dice_ET", "ET"), ("dice_WT", "WT"), ("dice_TC", "TC"))
LABELS = {"backbone": "Backbone", "gaze_star": "+gaze*", "san_star": "+SAN*", "ours_no_gaze": "ours-gaze",
          "ours": "ours", "ours_surv": "ours+surv", "cbam": "+CBAM", "tasn": "+TASN", "expert": "EG", "non_expert": "n-EG"}


LEADERBOARD = (("equiunet", "backbone"), ("equiunet", "gaze_star"), ("equiunet", "san_star"),
               ("equiunet", "ours_no_gaze"), ("equiunet", "ours"), ("equiunet", "ours_surv"), ("equiunet", "cbam"),
               ("equiunet", "tasn"), ("nnunet", "backbone"), ("nnunet", "ours"), ("dmfnet", "backbone"),
               ("dmfnet", "ours"))
QUICK_LEADERBOARD = tuple(r for r in LEADERBOARD if r[0] == "equiunet" and r[1] != "ours_surv")


def _leaderboard(quick: bool) -> dict:
    """Every 3D variant at data ratio 0.5 on the same folds: Dice / HD95 per region, SAN gaze CC, paired t-tests
    against the plain EquiUnet over cases, and each cell's parameters and training time (run.json). Quick: the
    EquiUnet variants on 3 folds (nnU-Net and DMFNet steps are 6x and 3x slower on CPU)."""
    combos, folds = (QUICK_LEADERBOARD, (0, 1, 2)) if quick else (LEADERBOARD, FOLDS)
    cells = [{"model.backbone": b, "method": m, "data.ratio": 0.5, "data.fold": f} for b, m in combos for f in folds]
    hd = (("hd95_ET", "ET H-95"), ("hd95_WT", "WT H-95"), ("hd95_TC", "TC H-95"))
    labels = {(b, m): f"{b} {LABELS.get(m, m)}" for b, m in combos}
    row = ("model.backbone", "method")
    tables = [{"title": "Leaderboard: Dice (%), HD95 (mm) and SAN gaze CC at data ratio 0.5", "row": row,
               "metrics": DICE + hd + (("gaze_cc", "gaze CC"),), "row_labels": labels, "title_row": "model",
               "reference": ("equiunet", "backbone")},
              {"title": "Cost: parameters and training time (run.json)", "row": row, "split": "run",
               "metrics": (("params", "parameters"), ("train_seconds", "training time (s)")), "row_labels": labels,
               "title_row": "model", "digits": {"params": 0, "train_seconds": 0}, "stats": False}]
    return {"cells": cells, "tables": tables, "repeat_label": "folds",
            "title": f"SAN+AAB BraTS leaderboard{' (quick)' if quick else ''}"}


def get_grid(name: str, quick: bool = False) -> dict:
    """Named sweeps for `python -m gazejax.experiments --config=configs/brats.py --grid=NAME [--quick]`: Tables 1-3
    and `leaderboard` (every 3D variant at one ratio; `--quick`: about 20 minutes on a 2-core CPU at the demo
    preset)."""
    if name == "leaderboard":
        return _leaderboard(quick)
    if quick:
        raise ValueError(f"grid {name!r} of configs/brats.py has no --quick size (leaderboard has)")
    if name == "table1":
        methods = ("backbone", "gaze_star", "san_star", "ours_no_gaze", "ours", "ours_surv")
        cells = [{"method": m, "data.ratio": r, "data.fold": f} for m in methods for r in RATIOS for f in FOLDS]
        tables = [{"title": "Table 1: Dice (%) by data ratio", "row": "method", "col": "data.ratio",
                   "metrics": DICE, "row_labels": LABELS, "reference": "backbone"}]
    elif name == "table2":
        cells = [{"method": "ours", "data.gaze_readers": g, "data.ratio": r, "data.fold": f}
                 for g in ("expert", "non_expert") for r in (0.2, 0.5) for f in FOLDS]
        tables = [{"title": "Table 2: expert (EG) vs non-expert (n-EG) gaze, Dice (%)", "row": "data.gaze_readers",
                   "col": "data.ratio", "metrics": DICE, "row_labels": LABELS, "reference": "expert"}]
    elif name == "table3":
        combos = [(b, m) for m in ("backbone", "ours") for b in ("equiunet", "nnunet", "dmfnet")]
        combos += [("equiunet", "cbam"), ("equiunet", "tasn")]
        cells = [{"model.backbone": b, "method": m, "data.ratio": r, "data.fold": f}
                 for b, m in combos for r in (0.2, 0.5) for f in FOLDS]
        hd = (("hd95_ET", "ET H-95"), ("hd95_WT", "WT H-95"), ("hd95_TC", "TC H-95"))
        tables = [{"title": "Table 3: backbones and attention modules, Dice (%) and HD95 (mm)",
                   "row": ("model.backbone", "method"), "col": "data.ratio", "metrics": DICE + hd,
                   "reference": ("equiunet", "backbone")}]
    else:
        raise ValueError(f"unknown grid {name!r} for configs/brats.py (table1 | table2 | table3 | leaderboard)")
    return {"cells": cells, "tables": tables, "title": f"SAN+AAB BraTS {name}", "repeat_label": "folds"}


def _demo(c: ml_collections.ConfigDict) -> None:
    """Small synthetic volumes and a narrow network: about 4 minutes on a 2-core CPU, data generation included.

    The volumes are scaled so that a 48^3 training crop covers most of the brain, as a 128^3 crop does for the real
    240x240x155 scans; evaluation windows then see what training saw. Adam replaces Ranger here: RAdam's
    rectification acts as a warm-up of roughly 1/(1 - b2) = 1000 steps, longer than the whole demo (a single volume
    is barely fitted after 80 Ranger steps, but is after 40 Adam steps).
    """
    c.data.synthetic.cases = 40
    c.data.synthetic.shape = (64, 64, 48)
    c.data.crop_size = (48, 48, 48)
    c.data.gaze_sigma = 3.0                 # the paper's 10 voxels, scaled like the volumes (64 / 240)
    c.model.width = 8
    c.model.nnunet_width = 8
    c.model.dmfnet_width = 32
    c.model.san_width = 8
    c.model.aab_heads = 2
    c.model.aab_head_dim = 16
    c.model.aab_scale_dim = 0               # per-head scaling, as before the paper preset's c_h fix
    # Protocol choices kept from earlier demos so their numbers stay comparable (the paper preset is faithful):
    c.data.ratio_pool = "all"               # fold 0 trains on all 29 cases, 12 with gaze (preferred: those 12)
    c.data.augment = "per_step"
    c.eval.mode = "window"                  # 48^3 windows (the training crop) over brain boxes up to 48x64x48
    c.optim.name = "adam"
    c.optim.lr = 1e-2
    c.optim.decay_start_epoch = 3
    c.epochs = 6
    c.eval_every_epochs = 2
