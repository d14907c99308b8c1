"""GazAT (shared/papers/gazat.txt): self-supervised contrastive pretraining in which gaze preserves attended regions in
the augmented view, model attention is pulled toward gaze at several layers, and a regional contrastive loss
separates high- from low-attention features; then linear probing and few-shot fine-tuning. Plus its baselines.

Methods (`config.method`; fixed here so that a grid overriding only `method` gets the right baseline):
- gazat: views I_a, I_g = A I + (1 - A) T_strong(I) (`gazejax.data.views`); L = L_contrast (NT-Xent over the 2N
  views, Sec. 2.3.2) + alpha L_attn (Sec. 2.3.3) + beta L_regional. `loss.gaze_views = "unblended"`: L_attn on I_a
  only and regional negatives from I_a (in I_g the clean vs strongly augmented pixels *are* the gaze map, so
  attention there can be read off the pixels); "both" is the earlier form (both views), kept as an ablation.
- random_maps: gazat with every gaze map replaced by a random smooth map (the fixations moved to random places).
- simclr: two views, NT-Xent only (alpha = beta = 0 by definition): no gaze anywhere. Gaze-free methods take
  T_strong on their second view (`views.baseline_strong`, the augmentation strength GazAT's I_g gets) unless it is
  off (two weak views).
- mcgip (McGIP, Zhao et al. AAAI 2024; zhaozh10/McGIP): simclr whose positives also include image pairs whose
  gaze similarity exceeds `mcgip.threshold` (multi-positive NT-Xent; gaze never enters the network). Similarity as
  the authors' heat-map scheme (`losses.gaze_similarity`: dHash of 8 x 9 maps, cosine of the bits; threshold 0.9,
  their BYOL+McGIP default);
  their SimCLR host (simclr_gaze.py) divides the summed -log p by the number of positive pairs, here each anchor's
  mean over its positives is averaged (Khosla et al.). The share of training pairs it marks is in report.md.
- byol (Grill et al.): predictor + momentum target (cosine schedule of m to 1), symmetric 2 - 2 cos. moco (MoCo
  v2): momentum encoder + queue (sized from the data, keys of the anchor's own image masked), shuffle-BN emulated
  over `moco.bn_groups` groups, symmetric InfoNCE against the queue.
- supervised: no pretraining; one stage on all training labels from a fresh initialisation.
Stages (Sec. 2.5.3): pretrain (evaluation = linear probe on frozen features + attention alignment; warm-up/cosine
learning rate from `pretrain_schedule`) -> finetune_<p>pct[_d<k>] for each label fraction and subset draw, each
from the pretraining's last checkpoint, for a fixed number of epochs (`pretrain_monitor` / `monitor` =
"val/train_calls": the last checkpoint; "val/probe_auroc" / "val/auroc" would select on a fully labelled
validation split many times the label budget); every stage is evaluated on test at the end (report.md shows them
side by side, with mean (std) over the draws). Evaluation: `gazejax.methods.gazat.evaluate`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gazejax import losses, models
from gazejax.methods.gazat import cases, losses as losses_ssl
from gazejax.data.cxr import labels as cxr_labels
from gazejax.data import transforms2d, views
from gazejax.engine.api import Stage
from gazejax.models.ssl import is_vit

SPECS = {  # method -> (views, objective, gaze losses (alpha, beta), random maps)
    "gazat": ("gaze", "nt_xent", True, False),
    "random_maps": ("gaze", "nt_xent", True, True),
    "simclr": ("standard", "nt_xent", False, False),
    "mcgip": ("standard", "mcgip", False, False),
    "byol": ("standard", "byol", False, False),
    "moco": ("standard", "moco", False, False),
    "supervised": (None, None, False, False),
}
PRETRAIN_TRAINABLE = ("online/*", "predictor/*", "region_head/*")
FINETUNE_TRAINABLE = ("online/backbone/*", "classifier/*")
RESNET_STRIDES = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def _fail(message: str) -> ValueError:
    return ValueError(f"gazat: {message}")


def spec(config) -> tuple:
    if config.method not in SPECS:
        raise _fail(f"unknown method {config.method!r}; choose one of {', '.join(SPECS)}")
    return SPECS[config.method]


def is_multilabel(config) -> bool:
    return config.data.label_set != "3class"


def num_classes(config) -> int:
    return len(cxr_labels.label_names(config.data.label_set))


# ---- model -------------------------------------------------------------------------------------------------------
def backbone_kwargs(config) -> dict[str, Any]:
    m, (h, w) = config.model, tuple(config.data.image_size)
    if is_vit(m.backbone):
        if h != w:
            raise _fail(f"{m.backbone} needs a square data.image_size, got {(h, w)}")
        return {"in_channels": 1, "image_size": int(h), **dict(m.vit)}
    if not m.backbone.startswith("resnet"):
        raise _fail(f"backbone must be resnet18/resnet50 or vit_b_16, got {m.backbone!r}")
    return {"in_channels": 1, "width": int(m.resnet_width)}


def attention_layers(config) -> tuple[str, ...]:
    """The layers whose model attention is aligned with gaze: resnet stages 2-4, ViT layers L/3, 2L/3 and L."""
    if config.model.attention_layers:
        return tuple(config.model.attention_layers)
    if is_vit(config.model.backbone):
        n = int(config.model.vit["num_layers"])
        return tuple(dict.fromkeys(f"encoder_layer_{max(0, k - 1)}" for k in (n // 3, 2 * n // 3, n)))
    return ("layer2", "layer3", "layer4")


def region_layer(config) -> str:
    return config.model.region_layer or ("patch_grid" if is_vit(config.model.backbone) else "layer4")


def layer_grid(config, layer: str) -> tuple[int, int]:
    """(h, w) of a layer's feature map: image / stride (resnet), the patch grid (ViT)."""
    h, w = (int(s) for s in config.data.image_size)
    stride = int(config.model.vit["patch_size"]) if is_vit(config.model.backbone) else RESNET_STRIDES.get(layer)
    if stride is None:
        raise _fail(f"unknown resnet layer {layer!r}; known: {', '.join(RESNET_STRIDES)}")
    return h // stride, w // stride


def layer_weights(config) -> dict[str, float]:
    """lambda_l per attention layer (config.loss.layer_weights; () = equal weights summing to 1)."""
    layers, given = attention_layers(config), tuple(config.loss.layer_weights)
    if not given:
        return {name: 1.0 / len(layers) for name in layers}
    if len(given) != len(layers):
        raise _fail(f"loss.layer_weights has {len(given)} values for the {len(layers)} attention layers {layers}")
    return dict(zip(layers, (float(v) for v in given)))


def momentum_fields(config, objective: str) -> dict[str, Any]:
    """The SSLModel fields of the momentum target and queue: BYOL's cosine schedule over the pretraining's steps,
    MoCo's constant momentum, queue (`cases.queue_size`: from the data unless given) and shuffle-BN groups."""
    if objective == "byol":
        b = config.byol
        cosine = b.momentum_schedule == "cosine"
        if b.momentum_schedule not in ("cosine", "constant"):
            raise _fail(f"byol.momentum_schedule must be 'cosine' or 'constant', got {b.momentum_schedule!r}")
        return {"momentum": float(b.momentum), "momentum_schedule": b.momentum_schedule,
                "momentum_steps": cases.momentum_steps(config) if cosine else 0}
    if objective != "moco":
        return {}
    size = cases.queue_size(config)
    if size % int(config.batch_size):
        raise _fail(f"moco.queue_size {size} must be a multiple of batch_size {config.batch_size}")
    groups, accum = int(config.moco.bn_groups), int(config.get("grad_accum_steps", 1) or 1)
    views_per_call = 2 * int(config.batch_size) // accum  # the model sees one micro-batch at a time
    if groups < 1 or views_per_call % groups:
        raise _fail(f"moco.bn_groups {groups} must divide the {views_per_call} views of a (micro-)batch")
    return {"momentum": float(config.moco.momentum), "queue_size": size, "bn_groups": groups}


def build_model(config) -> nn.Module:
    _, objective, gaze_losses, _ = spec(config)
    m = config.model
    return models.build("ssl", backbone=m.backbone, backbone_kwargs=backbone_kwargs(config), num_classes=num_classes(config),
                    attention_layers=attention_layers(config), region_layer=region_layer(config),
                    proj_hidden=int(m.proj_hidden), proj_dim=int(m.proj_dim), proj_bn=objective == "byol",
                    predictor_hidden=int(m.predictor_hidden) if objective == "byol" else 0, region_head=gaze_losses,
                    vit_attention=m.vit_attention, dtype=jnp.dtype(m.dtype), conv_impl=str(m.get("conv_impl", "auto")),
                    single_view_batch_stats=config.method == "supervised" or not config.finetune.freeze_norm,
                    **momentum_fields(config, objective))


def init_batch(config) -> dict[str, np.ndarray]:
    x = np.zeros((1, *config.data.image_size, 1), np.float32)
    return {"view_a": x, "view_g": x, "index": np.zeros((1,), np.int32)}


def model_inputs(batch) -> tuple:
    """Pretraining batches hold two views and each image's index in the training set (MoCo's queue keeps it with
    the keys), fine-tuning and evaluation batches one image."""
    if "view_a" not in batch:
        return (batch["image"],)
    return (batch["view_a"], batch["view_g"]) + ((batch["index"],) if "index" in batch else ())


# ---- losses ------------------------------------------------------------------------------------------------------
def task(config, stage=None) -> str:
    if stage is not None and "task" in stage.options:
        return stage.options["task"]
    return "finetune" if config.method == "supervised" else "pretrain"


def classification_loss(outputs: dict, batch: dict, config) -> tuple[jnp.ndarray, dict]:
    """Softmax CE (single-label classes) or sigmoid BCE (multi-label findings), unknown labels masked."""
    if is_multilabel(config):
        ce = losses.sigmoid_bce_multilabel(outputs["logits"], batch["label"], mask=batch["label_mask"])
    else:
        ce = losses.softmax_ce(outputs["logits"], jnp.maximum(batch["label"], 0), mask=batch["label_mask"])
    return ce, {"loss_ce": ce}


GAZE_VIEWS = {"unblended": "a", "both": "ag"}  # loss.gaze_views -> the views L_attn and the regional negatives use


def gaze_views(config) -> str:
    if config.loss.gaze_views not in GAZE_VIEWS:
        raise _fail(f"loss.gaze_views must be one of {tuple(GAZE_VIEWS)}, got {config.loss.gaze_views!r}")
    return GAZE_VIEWS[config.loss.gaze_views]


def gaze_losses(outputs: dict, batch: dict, config) -> tuple[jnp.ndarray, dict]:
    """alpha L_attn (each view of `gaze_views` against its own gaze maps, averaged) + beta L_regional (Sec.
    2.3.3-2.3.4)."""
    lo, has, used = config.loss, batch["has_gaze"], gaze_views(config)
    total, metrics = jnp.zeros((), jnp.float32), {}
    if lo.alpha > 0:
        weights = layer_weights(config)
        terms = [losses_ssl.attention_transfer(outputs[f"attention_{v}"],
                                               {k: batch[f"attn_{v}_{k}"] for k in weights}, weights, lo.distance,
                                               has) for v in used]
        attn = sum(t[0] for t in terms) / len(terms)
        total = total + lo.alpha * attn
        metrics["loss_attn"] = attn
        metrics.update({f"attn_{k}": sum(t[1][k] for t in terms) / len(terms) for k in weights})
    if lo.beta > 0:
        name = region_layer(config)
        reg, stats = losses_ssl.regional_contrastive(
            outputs["dense_a"], outputs["dense_g"], batch[f"attn_a_{name}"], batch[f"attn_g_{name}"],
            lo.regional_high, lo.regional_low, lo.temperature, has, negatives=lo.regional_negatives,
            negative_views=used)
        total = total + lo.beta * reg
        metrics.update(loss_regional=reg, **stats)
    return total, metrics


def pretrain_loss(outputs: dict, batch: dict, config) -> tuple[jnp.ndarray, dict]:
    _, objective, with_gaze, _ = spec(config)
    tau = float(config.loss.temperature)
    if objective == "byol":  # Grill et al. Eq. 2, symmetrised (L + L~)
        loss = losses_ssl.byol_loss(outputs["p_a"], outputs["zt_g"]) + losses_ssl.byol_loss(outputs["p_g"],
                                                                                              outputs["zt_a"])
        return loss, {"loss_byol": loss}
    if objective == "moco":  # keys queued from the anchor's own image are no negatives
        q, q_ids, ids = outputs["queue"], outputs.get("queue_ids"), batch.get("index")
        loss = 0.5 * (losses_ssl.moco_infonce(outputs["z_a"], outputs["zt_g"], q, tau, q_ids, ids)
                      + losses_ssl.moco_infonce(outputs["z_g"], outputs["zt_a"], q, tau, q_ids, ids))
        return loss, {"loss_moco": loss}
    positives = None
    if objective == "mcgip":
        positives = losses_ssl.gaze_similarity_positives(batch["gaze_sig"], batch["has_gaze"],
                                                         float(config.mcgip.threshold), config.mcgip.similarity)
    contrast = losses_ssl.nt_xent(outputs["z_a"], outputs["z_g"], tau, positives)
    metrics = {"loss_contrast": contrast}
    if positives is not None:
        metrics["mcgip_extra_positives"] = jnp.mean(jnp.sum(positives, axis=1) - 1.0)
    if not with_gaze:
        return contrast, metrics
    extra, more = gaze_losses(outputs, batch, config)
    return contrast + extra, {**metrics, **more}


def loss_fn(outputs: dict, batch: dict, params: Any, config, stage=None) -> tuple[jnp.ndarray, dict]:
    """Pretraining: the method's objective (module docstring); fine-tuning / supervised: classification loss."""
    del params
    if task(config, stage) == "finetune":
        return classification_loss(outputs, batch, config)
    return pretrain_loss(outputs, batch, config)


# ---- data --------------------------------------------------------------------------------------------------------
def view_config(config) -> views.ViewConfig:
    """The pretraining views of the method (module docstring): gaze-guided or standard, with its attention targets."""
    mode, objective, with_gaze, random = spec(config)
    grids = {}
    if with_gaze:
        grids = {name: layer_grid(config, name) for name in (*attention_layers(config), region_layer(config))}
    g = config.gaze
    return views.ViewConfig(
        mode=mode, standard=transforms2d.AugmentConfig.from_dict(config.views.standard),
        strong=views.StrongAugment.from_dict(config.views.strong),
        attention=views.AttentionSpec(kind=g.kind, aggregate=g.aggregate, max_readers=int(g.max_readers),
                                      random=random),
        grids=grids, gaze_view_geometric=bool(config.views.gaze_view_geometric),
        baseline_strong=bool(config.views.baseline_strong),
        signature_grid=tuple(config.mcgip.grid) if objective == "mcgip" else None)


# ---- stages ------------------------------------------------------------------------------------------------------
def fraction_name(fraction: float) -> str:
    """0.01 -> "1pct", 0.1 -> "10pct"."""
    return f"{float(fraction) * 100:g}pct".replace(".", "p")


def label_subsets(config) -> list[tuple[str, float, int]]:
    """(name, fraction, draw) of every few-shot label subset: "<p>pct" with one draw, "<p>pct_d<k>" with several
    (`finetune.subset_draws`; draw k is seeded by data.seed + k, the same for every method and training seed)."""
    draws = int(config.finetune.subset_draws)
    if draws < 1:
        raise _fail(f"finetune.subset_draws must be >= 1, got {draws}")
    return [(fraction_name(f) + (f"_d{k}" if draws > 1 else ""), float(f), k)
            for f in config.finetune.label_fractions for k in range(draws)]


def stages(config) -> list[Stage]:
    """pretrain -> finetune_<subset> per label subset (each from the pretraining's checkpoint that
    `pretrain_monitor` picks: the last by default); supervised: one stage."""
    spec(config)
    ft = config.finetune
    finetune = dict(epochs=int(ft.epochs), trainable=FINETUNE_TRAINABLE, optimizer={"lr": float(ft.lr)},
                    evaluate=True, options={"task": "finetune"})
    if config.method == "supervised":
        return [Stage(name="supervised", init_from="init", monitor=config.supervised_monitor, **finetune)]
    out = [Stage(name="pretrain", epochs=int(config.pretrain_epochs), trainable=PRETRAIN_TRAINABLE,
                 optimizer=config.pretrain_schedule.to_dict(), monitor=config.pretrain_monitor, evaluate=True,
                 options={"task": "pretrain"})]
    for name, _, _ in label_subsets(config):
        out.append(Stage(name=f"finetune_{name}", train_set=f"label_{name}", init_from="pretrain",
                         monitor=config.monitor, **finetune))
    return out
