"""GazAT (shared/papers/gazat.txt): self-supervised contrastive pretraining in which gaze preserves attended regions in
the augmented view, model attention is pulled toward gaze at several layers, and a regional contrastive loss
separates high- from low-attention features; then linear probing and few-shot fine-tuning. Plus its baselines.

Methods (`config.method`; fixed here so that a grid overriding only `method` gets the right baseline):
- gazat: views I_a, I_g = A I + (1 - A) T_strong(I) (`gazejax.data.views`); L = L_contrast (NT-Xent over the 2N
  views, Sec. 2.3.2) + alpha L_attn (Sec. 2.3.3, both views against their own warped gaze maps) + beta L_regional.
- random_maps: gazat with every gaze map replaced by a random smooth map (the fixations moved to random places).
- simclr: two standard views, NT-Xent only (alpha = beta = 0 by definition): no gaze anywhere.
- mcgip (McGIP, Zhao et al.): simclr whose positives also include image pairs with gaze-map cosine similarity above
  `mcgip.threshold` (multi-positive NT-Xent; gaze never enters the network).
- byol (Grill et al.): predictor + momentum target, symmetric 2 - 2 cos. moco (MoCo v2): momentum encoder + queue,
  symmetric InfoNCE against the queue.
- supervised: no pretraining; one stage on all training labels from a fresh initialisation.
Stages (Sec. 2.5.3): pretrain (evaluation = linear probe on frozen features + attention alignment) ->
finetune_<p>pct for each label fraction, each from the pretraining's best checkpoint; every stage is evaluated on
test at the end (report.md shows them side by side). Evaluation: `gazejax.methods.gazat.evaluate`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gazejax import losses
from gazejax.methods.gazat import losses as losses_ssl
from gazejax.data.cxr import labels as cxr_labels
from gazejax.data import transforms2d, views
from gazejax.engine.api import Stage
from gazejax.models.ssl import SSLModel, is_vit

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
    return ValueError(f"methods/gazat.py: {message}")


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


def build_model(config) -> nn.Module:
    _, objective, gaze_losses, _ = spec(config)
    m = config.model
    if objective == "moco" and int(config.moco.queue_size) % int(config.batch_size):
        raise _fail(f"moco.queue_size {config.moco.queue_size} must be a multiple of batch_size {config.batch_size}")
    momentum = {"byol": config.byol.momentum, "moco": config.moco.momentum}.get(objective, 0.0)
    return SSLModel(backbone=m.backbone, backbone_kwargs=backbone_kwargs(config), num_classes=num_classes(config),
                    attention_layers=attention_layers(config), region_layer=region_layer(config),
                    proj_hidden=int(m.proj_hidden), proj_dim=int(m.proj_dim), proj_bn=objective == "byol",
                    predictor_hidden=int(m.predictor_hidden) if objective == "byol" else 0, region_head=gaze_losses,
                    momentum=float(momentum), queue_size=int(config.moco.queue_size) if objective == "moco" else 0,
                    vit_attention=m.vit_attention, dtype=jnp.dtype(m.dtype), conv_impl=str(m.get("conv_impl", "auto")),
                    single_view_batch_stats=config.method == "supervised" or not config.finetune.freeze_norm)


def init_batch(config) -> dict[str, np.ndarray]:
    x = np.zeros((1, *config.data.image_size, 1), np.float32)
    return {"view_a": x, "view_g": x}


def model_inputs(batch) -> tuple:
    """Pretraining batches hold two views, fine-tuning and evaluation batches one image."""
    return (batch["view_a"], batch["view_g"]) if "view_a" in batch else (batch["image"],)


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


def gaze_losses(outputs: dict, batch: dict, config) -> tuple[jnp.ndarray, dict]:
    """alpha L_attn (both views, each against its own gaze maps) + beta L_regional (Sec. 2.3.3-2.3.4)."""
    lo, has = config.loss, batch["has_gaze"]
    total, metrics = jnp.zeros((), jnp.float32), {}
    if lo.alpha > 0:
        weights = layer_weights(config)
        terms = [losses_ssl.attention_transfer(outputs[f"attention_{v}"],
                                               {k: batch[f"attn_{v}_{k}"] for k in weights}, weights, lo.distance,
                                               has) for v in ("a", "g")]
        attn = 0.5 * (terms[0][0] + terms[1][0])
        total = total + lo.alpha * attn
        metrics["loss_attn"] = attn
        metrics.update({f"attn_{k}": 0.5 * (terms[0][1][k] + terms[1][1][k]) for k in weights})
    if lo.beta > 0:
        name = region_layer(config)
        reg, stats = losses_ssl.regional_contrastive(
            outputs["dense_a"], outputs["dense_g"], batch[f"attn_a_{name}"], batch[f"attn_g_{name}"],
            lo.regional_high, lo.regional_low, lo.temperature, has)
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
    if objective == "moco":
        q = outputs["queue"]
        loss = 0.5 * (losses_ssl.moco_infonce(outputs["z_a"], outputs["zt_g"], q, tau)
                      + losses_ssl.moco_infonce(outputs["z_g"], outputs["zt_a"], q, tau))
        return loss, {"loss_moco": loss}
    positives = None
    if objective == "mcgip":
        positives = losses_ssl.gaze_similarity_positives(batch["gaze_sig"], batch["has_gaze"],
                                                         float(config.mcgip.threshold))
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


def stages(config) -> list[Stage]:
    """pretrain -> finetune_<p>pct per label fraction (each from the pretraining's best); supervised: one stage."""
    spec(config)
    ft = config.finetune
    finetune = dict(epochs=int(ft.epochs), trainable=FINETUNE_TRAINABLE, optimizer={"lr": float(ft.lr)},
                    monitor=config.monitor, evaluate=True, options={"task": "finetune"})
    if config.method == "supervised":
        return [Stage(name="supervised", init_from="init", **finetune)]
    out = [Stage(name="pretrain", epochs=int(config.pretrain_epochs), trainable=PRETRAIN_TRAINABLE,
                 monitor=config.pretrain_monitor, evaluate=True, options={"task": "pretrain"})]
    for fraction in ft.label_fractions:
        name = fraction_name(fraction)
        out.append(Stage(name=f"finetune_{name}", train_set=f"label_{name}", init_from="pretrain", **finetune))
    return out
