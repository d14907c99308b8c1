r"""GazAT: gaze-guided attention transfer for self-supervised chest X-ray pretraining, its baselines and its
evaluation protocol (shared/papers/gazat.txt).

Demo (synthetic REFLACX-format data generated on first use; a few minutes on a 2-core CPU):
  python -m gazejax.main --config=configs/gazat.py
  python -m gazejax.main --config=configs/gazat.py:method=simclr
Apply a fine-tuned model (a finetune_* stage: the pretraining stage has no classifier) to new radiographs:
  python -m gazejax.export --workdir=RUN --stage=finetune_10pct_d0 --out=/tmp/gazat_model
  python -m gazejax.predict --model=/tmp/gazat_model --input=/path/to/images --output=/tmp/gazat_pred --maps
The paper's settings (REFLACX + its MIMIC-CXR DICOMs; ResNet-50 or ViT-B/16 at 224 px, batch 128, 200 epochs):
  python -m gazejax.main --config=configs/gazat.py:preset=paper,backbone=vit_b_16 \
      --config.data.root=/path/to/reflacx --config.data.mimic_root=/path/to/mimic-cxr
Baselines side by side / the Sec. 2.5.4 ablations:
  python -m gazejax.experiments --config=configs/gazat.py --grid=compare
  python -m gazejax.experiments --config=configs/gazat.py --grid=ablation

Arguments (`configs/gazat.py:key=val,...`): preset=demo|paper, method=gazat|simclr|byol|moco|mcgip|random_maps|
supervised, backbone=resnet50|vit_b_16, dataset=reflacx|egd_cxr, seed.
One run = the protocol of Sec. 2.5.3 as stages: pretrain (linear probe on frozen features in its evaluation) ->
finetune_1pct_d<k> and finetune_10pct_d<k> for `finetune.subset_draws` label-subset draws k (each from the
pretraining's last checkpoint, a fixed number of epochs); supervised: one stage on all labels from scratch. What
each method means (views, losses) is fixed in gazejax/methods/gazat/spec.py, so a grid that only overrides `method`
gets the right baseline; `loss.alpha` / `loss.beta` are GazAT's (simclr has none by definition).
"""
from __future__ import annotations

import ml_collections

from gazejax.engine.config_args import add_engine_fields, parse_arg

METHODS = ("gazat", "simclr", "byol", "moco", "mcgip", "random_maps", "supervised")
BACKBONES = ("resnet50", "vit_b_16")
DATASETS = ("reflacx", "egd_cxr")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, preset="demo", method="gazat", backbone="resnet50", dataset="reflacx", seed=0)
    for key, allowed in (("method", METHODS), ("backbone", BACKBONES), ("dataset", DATASETS)):
        if args[key] not in allowed:
            raise ValueError(f"configs/gazat.py: {key} must be one of {allowed}, got {args[key]!r}")
    c = ml_collections.ConfigDict()
    c.preset = args["preset"]
    c.method_family = "gazat"               # gazejax.methods.<family>
    c.method = args["method"]               # see METHODS; semantics in gazejax/methods/gazat/spec.py
    c.seed = int(args["seed"])              # parameter init / shuffling / augmentation seed
    c.ablation = ""                         # name of a Sec. 2.5.4 ablation cell (a label for the runner's tables)
    _data(c, reflacx=args["dataset"] == "reflacx")
    _model(c, args["backbone"])
    _training(c)
    add_engine_fields(c)
    if c.preset == "demo":
        _demo(c)
    elif c.preset != "paper":
        raise ValueError(f"configs/gazat.py: unknown preset {c.preset!r} (demo | paper)")
    return c


def _data(c: ml_collections.ConfigDict, reflacx: bool) -> None:
    """Data set, gaze maps (Sec. 2.2.2) and views (Sec. 2.3.2)."""
    c.data = d = ml_collections.ConfigDict()
    d.dataset = "reflacx" if reflacx else "egd_cxr"  # REFLACX (Sec. 2.5.1: readers, finding ellipses) / EGD-CXR
    d.root = ""                             # data set folder; "" = built-in synthetic set of that layout
    d.mimic_root = ""                       # root of the MIMIC-CXR DICOMs the data set points at
    d.cache_dir = ""                        # resized-image cache; "" = ~/.cache/gazejax/cxr_<hash of root>
    d.image_size = (224, 224)               # ResNet-50 / ViT-B/16 input
    d.label_set = "5label" if reflacx else "3class"  # downstream labels (REFLACX: 5 CheXpert findings, multi-label)
    d.label_policy = ""                     # uncertain / blank label policy ("" = U-Ones, blank -> 0)
    d.reader = {"group_by": "image"} if reflacx else {"source": "fixations"}  # reader options (one record per image)
    d.gaze_sigma = "dataset" if reflacx else "150"  # Gaussian sigma: REFLACX 1 degree per fixation; EGD-CXR 150 px
    d.reader_weights = {}                   # reader (reading) id -> weight, for gaze.aggregate = "weighted"
    d.split = "70/10/20"                    # train / validation / test shares (patient-level, label-stratified)
    d.ratio = 1.0                           # share of the training part used (pretraining images)
    d.seed = 0                              # validation draw (fixed across training seeds)
    d.test_seed = 0                         # test draw (never changes)
    d.num_threads = 2                       # Grain reader threads
    d.prefetch = 2                          # Grain prefetch buffer (batches)
    d.synthetic = s = ml_collections.ConfigDict()
    s.dir = ""                              # where the synthetic set is generated; "" = ~/.cache/gazejax
    s.style = "basic"                       # basic (README demo numbers) | realistic (patients vary, graded findings)
    s.difficulty = 0.5                      # realistic only: 0 easy .. 1 hard (gazejax/data/synthetic/cxr_realistic.py)
    s.label_noise = None                    # realistic only: share of flipped class labels; None = the difficulty's
    s.images = 2616 if reflacx else 1083    # as many images as the real data set (REFLACX: 2616 with gaze)
    s.seed = 0
    s.size = (512, 416)                     # synthetic DICOM size

    c.gaze = g = ml_collections.ConfigDict()  # Sec. 2.2.2: gaze -> attention map A
    g.kind = "duration"                     # duration-weighted Gaussians (Sec. 2.2.2) | count (weight 1 each)
    g.aggregate = "mean"                    # several readers: mean | weighted (data.reader_weights) | pooled
    g.max_readers = 0                       # use the first k readers of each image (0 = all; Sec. 2.5.4 #2)

    c.views = v = ml_collections.ConfigDict()  # Sec. 2.3.2
    v.standard = {"scale": (0.8, 1.0), "rotation": 10.0, "brightness": 0.2, "contrast": 0.2}  # I_a (Sec. 2.4)
    v.strong = {"jitter": 0.4, "jitter_prob": 0.8, "blur_sigma": (0.5, 2.0), "blur_prob": 0.5, "noise_std": 0.05,
                "noise_prob": 0.5, "cutout_count": 1, "cutout_size": (0.1, 0.3), "cutout_prob": 0.5}  # T_strong
    v.gaze_view_geometric = True            # I in I_g = A I + (1 - A) T_strong(I) is itself a standard view
    v.baseline_strong = True                # gaze-free methods: 2nd view T_strong(standard), the strength GazAT's I_g
    #                                         gets (False = two weak standard views: the compare grid's extra rows)


def _model(c: ml_collections.ConfigDict, backbone: str) -> None:
    """Encoder, heads and the losses' hyper-parameters (Sec. 2.3-2.4)."""
    c.model = m = ml_collections.ConfigDict()
    m.backbone = backbone           # resnet50 | vit_b_16 (Sec. 2.4), trained from scratch
    m.resnet_width = 64                     # ResNet base width (torchvision 64)
    m.vit = {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}  # ViT-B/16
    m.attention_layers = ()                 # () = resnet: layer2-4 (stages 2-4); vit: layers L/3, 2L/3, L
    m.region_layer = ""                     # regional-loss features; "" = resnet layer4, vit patch_grid
    m.vit_attention = "rollout"             # ViT model attention: rollout | cls (the layer's class-token row)
    m.proj_hidden = 2048                    # projection head: 2-layer MLP (Sec. 2.4) ...
    m.proj_dim = 256                        # ... to 256
    m.predictor_hidden = 4096               # BYOL predictor hidden width (Grill et al.)
    m.dtype = "float32"                     # compute dtype (params stay float32)
    m.conv_impl = "auto"                    # conv formulation (models/conv_impl.py); auto = by backend
    m.init_from = ""                        # converted checkpoint to start from (python -m gazejax.models.convert)

    c.loss = lo = ml_collections.ConfigDict()  # L = L_contrast + alpha L_attn + beta L_regional (Sec. 2.3.4)
    lo.temperature = 0.2                    # tau of NT-Xent (not given; MoCo v2's 0.2)
    lo.alpha = 1.0                          # weight of L_attn (not given)
    lo.beta = 0.5                           # weight of L_regional (not given)
    lo.layer_weights = ()                   # lambda_l per attention layer; () = equal, summing to 1
    lo.distance = "l2"                      # D of L_attn: l2 (normalised maps, attention transfer) | kl
    lo.regional_high = 0.5                  # high-attention region: A >= this (at the region layer's grid)
    lo.regional_low = 0.1                   # low-attention region: A <= this
    lo.gaze_views = "unblended"             # L_attn and regional negatives on I_a (in I_g the blend shows the gaze
    #                                         map); "both" = both views (the earlier form, an ablation row)
    lo.regional_negatives = "low"           # other images' regions as negatives: low (Sec. 2.3.3's r_low^j) |
    #                                         low+high (also their high regions: no two-vector solution; demo)
    c.mcgip = mc = ml_collections.ConfigDict()  # McGIP positives (zhaozh10/McGIP GazeSimilarityEval/dhash.py)
    mc.similarity = "dhash"                 # dhash: cosine of difference-hash bits (the authors' heat-map scheme) |
    #                                         cosine: cosine of the maps
    mc.grid = (8, 9)                        # un-augmented gaze map grid (rows, cols): the authors' 8 x 9
    mc.threshold = 0.9                      # similarity > threshold: a positive pair (their BYOL+McGIP default; their
    #                                         range 0.7-0.95; 0.7 marks 88 % of the synthetic set's pairs, 0.9 1.8 %)
    c.byol = b = ml_collections.ConfigDict()  # Grill et al. 2020
    b.momentum = 0.996                      # base target EMA ...
    b.momentum_schedule = "cosine"          # ... raised to 1 by 1 - (1 - m)(cos(pi k / K) + 1) / 2 | constant
    b.total_steps = 0                       # K; 0 = the pretraining's optimiser steps (from the data)
    c.moco = mo = ml_collections.ConfigDict()  # MoCo v2 (He et al. 2020, Chen et al. 2020)
    mo.momentum = 0.99                      # MoCo's 0.999 is for ~1e6 steps; ~3 k steps here (200 epochs of ~1.8 k)
    mo.queue_size = 0                       # keys; 0 = from the data: a multiple of the batch <= queue_share x images
    mo.queue_share = 0.5                    # (65,536 keys would hold every training image ~36 times)
    mo.bn_groups = 8                        # shuffle-BN emulation: BN over 8 groups of the 2 x 128 views (MoCo's
    #                                         8 GPUs x 32), keys in a shuffled order; 1 = off


def _training(c: ml_collections.ConfigDict) -> None:
    """Optimiser, stages (Sec. 2.4) and evaluation (Sec. 2.5.3)."""
    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"                        # AdamW (Sec. 2.4)
    o.lr = 1e-4                             # Sec. 2.4
    o.weight_decay = 1e-2                   # not given: torch AdamW's default
    c.batch_size = 128                      # Sec. 2.4
    c.pretrain_epochs = 200                 # Sec. 2.4
    c.pretrain_schedule = {"warmup_epochs": 10, "decay_start_epoch": 10}  # pretraining lr: 10 epochs of linear
    #                                         warm-up, then cosine to 0 (SimCLR / BYOL / MoCo v2 recipes; Sec. 2.4
    #                                         gives none); Stage.optimizer keys (engine.stage_rules.stage_tx)
    c.finetune = f = ml_collections.ConfigDict()
    f.epochs = 50                           # Sec. 2.4 (also the supervised baseline's epochs)
    f.lr = 1e-4                             # fine-tuning AdamW learning rate
    f.label_fractions = (0.01, 0.1)         # Sec. 2.5.3 few-shot: 1 % and 10 % of the training labels
    f.subset_draws = DRAWS                  # label-subset draws per fraction (report: mean (std) over them)
    f.freeze_norm = True                    # keep the pretrained batch-norm statistics while fine-tuning
    c.eval_every_epochs = 5                 # validation (and linear probe) every k epochs
    c.pretrain_monitor = "val/train_calls"  # the pretraining checkpoint the fine-tunings start from: the last
    #                                         ("val/probe_auroc" would pick it with validation labels)
    c.monitor = "val/train_calls"           # each fine-tuning's checkpoint: the last (fixed epochs, Sec. 2.4);
    #                                         "val/auroc" selects on a validation split ~14x the 1 % budget
    c.supervised_monitor = "val/auroc"      # the supervised baseline (all labels) selects on validation
    c.log_every_steps = 10
    c.num_devices = 0                       # 0 = all visible devices

    c.eval = e = ml_collections.ConfigDict()
    e.batch = 64                            # images per inference call
    e.probe_cs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # linear-probe C sweep (chosen on validation)
    e.saliency_grid = (56, 56)              # grid of the attention-alignment metrics (model maps upsampled)
    e.pointing_tolerance = 15.0 / 224.0     # pointing-game tolerance, a share of the image side (15 px at 224)
    e.tsne_perplexity = 30.0               # t-SNE of the test embeddings (report)


def _demo(c: ml_collections.ConfigDict) -> None:
    """64x64 inputs, a width-8 ResNet-50 (or a 4-layer ViT), 400 synthetic images and short stages."""
    c.data.image_size = (64, 64)
    c.data.synthetic.images = 400
    c.data.synthetic.size = (256, 208)
    c.model.resnet_width = 8
    c.model.vit = {"patch_size": 16, "num_layers": 4, "num_heads": 2, "hidden_dim": 64, "mlp_dim": 128}
    c.model.region_layer = "layer3" if c.model.backbone.startswith("resnet") else ""  # 4x4 cells at 64 px
    c.model.proj_hidden = 256
    c.model.predictor_hidden = 256
    c.moco.bn_groups = 4                    # groups of 16 of the 2 x 32 views
    c.byol.momentum = 0.99
    c.loss.regional_negatives = "low+high"
    c.optim.lr = 1e-3
    c.finetune.lr = 1e-3
    c.batch_size = 32
    c.pretrain_epochs = 10
    c.pretrain_schedule = {"warmup_epochs": 1, "decay_start_epoch": 1}
    c.finetune.epochs = 20
    c.eval_every_epochs = 5
    c.eval.saliency_grid = (16, 16)
    c.eval.tsne_perplexity = 20.0


LABELS = {"gazat": "GazAT", "simclr": "SimCLR", "byol": "BYOL", "moco": "MoCo v2", "mcgip": "McGIP",
          "random_maps": "random maps", "supervised": "supervised (full labels)"}
GAZE_FREE = ("simclr", "byol", "moco", "mcgip")  # take views.baseline_strong
COMPARE_ROW = ("method", "views.baseline_strong")
COMPARE_LABELS = {**{(m, None): name for m, name in LABELS.items()},
                  **{(m, True): LABELS[m] for m in GAZE_FREE},
                  **{(m, False): f"{LABELS[m]}, two weak views (extra row)" for m in GAZE_FREE}}
DRAWS = 3  # finetune.subset_draws of both presets: the grids' tables read each draw's stage


def _tables(row, labels: dict, draws: int = DRAWS) -> list[dict]:
    """Result tables; each reads the test results of one stage (`split`: results.json key). Their metrics exist
    only in that stage's results, so a runner that reads one split for all tables shows n/a, never another
    stage's values. One fine-tuning table per label fraction and subset draw (report.md of a run has their mean
    (std))."""
    ft = (("auroc", "AUROC"), ("accuracy", "accuracy"), ("f1", "F1"))
    align = (("attn_nss", "NSS"), ("attn_auc_judd", "AUC-Judd"), ("attn_cc", "CC"), ("attn_pointing", "pointing game"))
    common = {"row": row, "row_labels": labels, "title_row": "method", "stats": False}
    out = [{"title": "Linear probe (frozen features)", "split": "test@pretrain",
            "metrics": tuple((f"probe_{k}", n) for k, n in ft), **common},
           {"title": "Attention alignment with held-out gaze after pretraining", "split": "test@pretrain",
            "metrics": align, **common},
           {"title": "Supervised reference (all training labels, no pretraining)", "split": "test@supervised",
            "metrics": ft, **common}]
    for pct in ("1pct", "10pct"):
        for k in range(draws):
            suffix, which = (f"_d{k}", f", subset draw {k}") if draws > 1 else ("", "")
            out.append({"title": f"Fine-tuning with {pct[:-3]} % of the labels{which}",
                        "split": f"test@finetune_{pct}{suffix}", **common,
                        "metrics": ft + (("gradcam_nss", "Grad-CAM NSS"), ("gradcam_pointing", "Grad-CAM pointing"))})
    return out


ABLATIONS = {  # Sec. 2.5.4: cell name -> (row label, overrides of the gazat defaults)
    "full": ("GazAT (all components)", {}),
    "no_attn": ("1. without attention transfer (alpha = 0)", {"loss.alpha": 0.0}),
    "no_regional": ("1. without regional loss (beta = 0)", {"loss.beta": 0.0}),
    "views_only": ("1. gaze views only (alpha = beta = 0)", {"loss.alpha": 0.0, "loss.beta": 0.0}),
    "readers_1": ("2. one reader per image", {"gaze.max_readers": 1}),
    "readers_2": ("2. two readers per image", {"gaze.max_readers": 2}),
    "map_count": ("3. maps from fixation counts (no durations)", {"gaze.kind": "count"}),
    "map_pooled": ("3. readers pooled into one map", {"gaze.aggregate": "pooled"}),
    "distance_kl": ("3. KL instead of L2 in L_attn", {"loss.distance": "kl"}),
    "vit_b_16": ("4. ViT-B/16 backbone (attention rollout)", {"model.backbone": "vit_b_16", "model.region_layer": ""}),
    "lambda_shallow": ("5. lambda = (1, 0, 0)", {"loss.layer_weights": (1.0, 0.0, 0.0)}),
    "lambda_deep": ("5. lambda = (0, 0, 1)", {"loss.layer_weights": (0.0, 0.0, 1.0)}),
    "lambda_rising": ("5. lambda = (0.2, 0.3, 0.5)", {"loss.layer_weights": (0.2, 0.3, 0.5)}),
    "negatives_low": ("6. regional negatives: other images' low-gaze regions only (Sec. 2.3.3's text)",
                      {"loss.regional_negatives": "low"}),
    "blended_targets": ("6. L_attn and regional negatives on both views, low-gaze negatives (the earlier form)",
                        {"loss.gaze_views": "both", "loss.regional_negatives": "low"}),
}


def get_grid(name: str) -> dict:
    """Named sweeps for `python -m gazejax.experiments --config=configs/gazat.py --grid=NAME`.

    compare: every method of Sec. 2.5.2 (GazAT, SimCLR, BYOL, MoCo v2, McGIP, random maps, supervised) at one
    augmentation strength: the gaze-free methods' second view takes T_strong as GazAT's I_g does
    (views.baseline_strong); the same methods with two weak views are extra, labelled rows.
    ablation (Sec. 2.5.4): 1. components (attention transfer / regional loss on and off); 2. readers per image
    (1, 2, all); 3. map generation (duration-weighted / count; reader mean / pooled; KL instead of L2); 4. backbone
    (ResNet-50, ViT-B/16); 5. layer weights lambda_l (shallow only, deep only, increasing with depth); 6. the
    regional negatives (low only) and the earlier, shortcut-prone form (L_attn and negatives on the blended view).
    Tables read each stage's test results (`split` per table; the grid's `split`, the pretraining's, is the
    fallback of a runner that reads one split per grid).
    """
    if name == "compare":
        cells = ([{"method": m} for m in METHODS if m not in GAZE_FREE and m != "supervised"]
                 + [{"method": m, "views.baseline_strong": strong} for strong in (True, False) for m in GAZE_FREE]
                 + [{"method": "supervised"}])
        return {"cells": cells, "tables": _tables(COMPARE_ROW, COMPARE_LABELS), "title": "GazAT and its baselines",
                "repeat_label": "seeds", "split": "test@pretrain"}
    if name != "ablation":
        raise ValueError(f"configs/gazat.py: unknown grid {name!r} (compare | ablation)")
    cells = [{"ablation": key, **overrides} for key, (_, overrides) in ABLATIONS.items()]
    labels = {key: label for key, (label, _) in ABLATIONS.items()}
    tables = [dict(t, title_row="ablation") for t in _tables("ablation", labels) if t["split"] != "test@supervised"]
    return {"cells": cells, "tables": tables,
            "title": "GazAT ablations (Sec. 2.5.4)", "repeat_label": "seeds", "split": "test@pretrain"}
