r"""CXRGazeLearn: DenseNet-201 + Res_SE-UNet with multi-stage cooperative learning, for joint 3-class chest X-ray
diagnosis and gaze saliency prediction (Qiu et al.), and the baselines of its Tables 1 and 2.

Demo (synthetic EGD-CXR-format data generated on first use; all four stages in a few minutes on a 2-core CPU):
  python -m gazejax.main --config=configs/cxrgazelearn.py --workdir=/tmp/cxrgl
Apply the trained model (stage 3, the fusion classifier, with its saliency map) to new radiographs:
  python -m gazejax.export --workdir=/tmp/cxrgl --out=/tmp/cxrgl_model
  python -m gazejax.predict --model=/tmp/cxrgl_model --input=/path/to/dicoms --output=/tmp/cxrgl_pred --maps
The paper's settings on the real data (EGD-CXR + its MIMIC-CXR DICOMs):
  python -m gazejax.main --config=configs/cxrgazelearn.py:preset=paper,method=cxrgazelearn \
      --config.data.root=/path/to/egd-cxr --config.data.mimic_root=/path/to/mimic-cxr
Tables 1 and 2 (the full method and every baseline; baselines run first so the full method's report.md and its
Fig. 2 can show them, see gazejax/methods/cxrgazelearn/report.py):
  python -m gazejax.experiments --config=configs/cxrgazelearn.py --grid=tables12 --workdir=/tmp/cxrgl_grid

Arguments (`configs/cxrgazelearn.py:key=val,...`): preset=demo|paper, seed, method=
  cxrgazelearn  stages 1a (triplet pretraining), 1b (CE fine-tuning), 2 (saliency), 3 (fusion classifier)
  dnet201_cl    DenseNet-201 with triplet pretraining: stages 1a + 1b ("DNet201-CL", Table 1)
  dnet201       DenseNet-201, CE only: stage 1b ("DNet201", Table 1)
  res_se_unet   the Res_SE-UNet without the DenseNet feature: stage 2 ("Res_SE-UNet", Table 2)
  unet_s        a standard UNet: stage 2 ("UNet_S", Table 2)
  mt_unet       MT-UNet (Zhu et al.): one joint stage with learnable Kendall-style weights (Tables 1 and 2)
"""
from __future__ import annotations

import ml_collections

from gazejax.engine.config_args import add_engine_fields, parse_arg

METHODS = ("cxrgazelearn", "mt_unet", "dnet201_cl", "dnet201", "res_se_unet", "unet_s")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, preset="demo", method="cxrgazelearn", seed=0)
    if args["method"] not in METHODS:
        raise ValueError(f"configs/cxrgazelearn.py: method must be one of {METHODS}, got {args['method']!r}")
    c = ml_collections.ConfigDict()
    c.preset = args["preset"]
    c.method_family = "cxrgazelearn"        # gazejax.methods.<family>
    c.method = args["method"]               # see the module docstring; decides the model and the stages
    c.seed = int(args["seed"])              # parameter init / shuffling seed; the data split stays fixed

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "egd_cxr"                   # "chest X-ray dataset with eye-tracking and report dictation" [22]
    d.root = ""                             # EGD-CXR folder (master_sheet.csv, ...); "" = built-in synthetic set
    d.mimic_root = ""                       # root that master_sheet.path is relative to (the MIMIC-CXR DICOMs)
    d.cache_dir = ""                        # resized-image cache; "" = ~/.cache/gazejax/cxr_<hash of root>
    d.image_size = (640, 512)               # "padded and resampled ... to 640 x 512 pixels", [0, 1] per image
    d.gaze_grids = {"saliency": (640, 512)}  # saliency maps at the network's output grid (= image_size)
    d.gaze_kind = "gaussian"                # duration-weighted Gaussians per fixation (EGD-CXR's heat maps)
    d.gaze_normalize = "sum"                # a distribution (sum 1): the KL target
    d.gaze_sigma = 150.0                    # Gaussian sigma, DICOM pixels (EGD-CXR's heat-map code; scaled for
                                            # the synthetic set by its height / 3056)
    d.reader = {}                           # EGD-CXR reader options ({} = fixations.csv)
    d.label_set = "3class"                  # normal, heart failure (CHF), pneumonia
    d.label_policy = ""                     # unused by "3class"
    d.split = "983/100"                     # 100 random test images, the rest train + validate (Sec. III.E)
    d.val_fraction = 0.1                    # share of the 983 that validates (early stopping, best checkpoints)
    d.ratio = 1.0                           # share of the training part used
    d.seed = 0                              # validation draw (fixed across training seeds)
    d.test_seed = 0                         # test draw; never changes with training seeds
    d.augment = {"enabled": False}          # the paper names no augmentation
    d.num_threads = 2                       # Grain reader threads
    d.prefetch = 2                          # Grain prefetch buffer (batches)
    d.synthetic = s = ml_collections.ConfigDict()
    s.dir = ""                              # where the synthetic set is generated; "" = ~/.cache/gazejax
    s.style = "basic"                       # basic (README demo numbers) | realistic (patients vary, graded findings)
    s.difficulty = 0.5                      # realistic only: 0 easy .. 1 hard (gazejax/data/synthetic/cxr_realistic.py)
    s.label_noise = None                    # realistic only: share of flipped class labels; None = the difficulty's
    s.images = 1083                         # as many images as EGD-CXR
    s.seed = 0
    s.size = (512, 416)                     # synthetic DICOM size (gaze_sigma is scaled by height / 3056)

    c.model = m = ml_collections.ConfigDict()
    m.densenet_growth = 32                  # DenseNet-201: growth rate 32
    m.densenet_blocks = (6, 12, 48, 32)     # DenseNet-201 dense blocks
    m.densenet_init_features = 64           # DenseNet-201 stem width
    m.densenet_bn_size = 4                  # DenseNet-BC bottleneck factor
    m.encoder_cut = "transition3"           # map injected into the UNet: "all layers before the last dense
                                            # block" | denseblock4 (ref. code); stage 1 trains the whole DenseNet
    m.unet_widths = (64, 128, 256, 512, 1024)  # Res_SE-UNet / UNet_S / MT-UNet widths, four max-pools
    m.fusion_hidden = 64                    # fusion classifier: Linear 64 -> Dropout -> ReLU -> Linear 3
    m.fusion_dropout = 0.25
    m.detach = True                         # saliency / fusion losses never reach the encoders they read
    m.dtype = "float32"                     # compute dtype (params stay float32)
    m.conv_impl = "auto"                    # conv formulation (models/conv_impl.py); auto = by backend
    m.init_from = ""                        # converted ImageNet DenseNet-201 (python -m gazejax.models.convert);
                                            # "" = from scratch (the paper preset warns in the log and report)

    c.loss = lo = ml_collections.ConfigDict()
    lo.triplet_margin = 1.0                 # TripletMarginLoss(margin=1.0, p=2) of the reference code
    lo.triplet_mining = "all"               # all: every valid triplet of a batch | hard: batch-hard
    lo.kl_form = "mit"                      # mit: MIT-benchmark KL (= the evaluation metric) | torch: F.kl_div

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adam"                         # "Adam optimizer with its default parameters"
    o.lr = 1e-4                             # "a learning rate of 0.0001"
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.weight_decay = 0.0

    c.batch_size = 8                        # not stated in the paper
    c.epochs = 50                           # "for each stage, the training process is conducted over 50 epochs"
    c.stage_epochs = {}                     # per-stage overrides, e.g. {"stage3": 20}
    c.early_stop_patience = 10              # evaluations without progress ("early stopping was employed")
    c.eval_every_epochs = 1
    c.log_every_steps = 10
    c.num_devices = 0                       # 0 = all visible devices

    c.eval = e = ml_collections.ConfigDict()
    e.batch = 8                             # images per inference call
    e.compare_siblings = True               # report.md: Tables 1-2 / Fig. 2 with finished sibling runs (a grid)

    add_engine_fields(c)
    if c.preset == "demo":
        _demo(c)
    elif c.preset != "paper":
        raise ValueError(f"configs/cxrgazelearn.py: unknown preset {c.preset!r} (demo | paper)")
    return c


LABELS = {"cxrgazelearn": "Ours", "mt_unet": "MT-UNet", "dnet201_cl": "DNet201-CL", "dnet201": "DNet201",
          "res_se_unet": "Res_SE-UNet", "unet_s": "UNet_S"}
GRID_ORDER = ("mt_unet", "dnet201", "dnet201_cl", "unet_s", "res_se_unet", "cxrgazelearn")  # ours last


def get_grid(name: str) -> dict:
    """`tables12`: the full method and every baseline, one seed (`--seeds` adds more); tables.md holds Table 1
    (classification), Table 2 (saliency means, with two-sided paired t-tests of every method's per-image KL / CC /
    HS / SIM against ours from `cases.json`) and the per-image std of Table 2."""
    if name != "tables12":
        raise ValueError(f"configs/cxrgazelearn.py: unknown grid {name!r} (tables12)")
    cells = [{"method": m, "seed": 0} for m in GRID_ORDER]
    table1 = (("auroc_Normal", "AUC (Normal)"), ("auroc_CHF", "AUC (Heart failure)"),
              ("auroc_pneumonia", "AUC (Pneumonia)"), ("auroc", "AUC"), ("accuracy", "Accuracy"))
    table2 = (("kl", "KL"), ("cc", "CC"), ("hs", "HS"), ("sim", "SIM"))  # HS = the paper's; SIM = MIT's
    tables = [
        {"title": "Table 1: chest X-ray classification (test split)", "row": "method", "title_row": "method",
         "row_labels": LABELS, "metrics": table1, "stats": False},
        {"title": "Table 2: saliency prediction (test split), paired t-tests of per-image scores vs ours",
         "row": "method", "title_row": "method", "row_labels": LABELS, "reference": "cxrgazelearn",
         "metrics": table2},
        {"title": "Table 2: std of the saliency metrics over test images", "row": "method", "title_row": "method",
         "row_labels": LABELS, "metrics": tuple((f"{k}_std", f"{name} std") for k, name in table2),
         "stats": False},
    ]
    return {"cells": cells, "tables": tables, "title": f"CXRGazeLearn {name}", "repeat_label": "seeds"}


def _demo(c: ml_collections.ConfigDict) -> None:
    """160x128 images (aspect of 640x512), a narrow DenseNet (growth 8, shorter blocks) and UNet (4..64), a
    short run per stage on 300 synthetic images; the paper's optimiser except a larger learning rate."""
    c.data.image_size = (160, 128)
    c.data.gaze_grids = {"saliency": (160, 128)}
    c.data.synthetic.images = 300
    c.data.synthetic.size = (320, 256)
    c.model.densenet_growth = 8
    c.model.densenet_blocks = (3, 6, 12, 8)
    c.model.densenet_init_features = 16
    c.model.unet_widths = (4, 8, 16, 32, 64)
    c.optim.lr = 1e-3
    c.batch_size = 16
    c.epochs = 8
    c.stage_epochs = {"stage1a": 4, "stage1b": 4, "stage3": 3}  # saliency (stage2, mt_unet) gets the 8
    c.early_stop_patience = 0
    c.log_every_steps = 5
    c.eval.batch = 32
