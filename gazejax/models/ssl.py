"""Self-supervised two-view model of GazAT (Sec. 2.3.1) and its baselines: a registry encoder with a projection head,
model attention maps at several layers, optional BYOL predictor, per-location region head, momentum encoder + MoCo
queue, and a classifier head for fine-tuning.

`SSLModel.__call__(x [B, H, W, C], x2=None, ids=None, train=False)`:
- one view (evaluation, fine-tuning): {"embedding": [B, F] pooled encoder features, "logits": [B, K],
  "attention": {layer: [B, h, w]}, "cam": [B, h4, w4, K] (CNN only: sum_c w_ck F4_c, see below), "train_calls": []
  int32 (the training calls, i.e. micro-batches, the weights have seen: the "progress" collection)}.
- two views (pretraining): {"z_a", "z_g": [B, P] projections, "attention_a", "attention_g": {layer: [B, h, w]},
  "embedding_a": [B, F], and, when configured, "p_a", "p_g" (BYOL predictor), "dense_a", "dense_g" [B, h, w, P]
  (region head on the region layer), "zt_a", "zt_g" (momentum target, gradient stopped), "queue" [K, P] (MoCo keys
  before this step's enqueue) and "queue_ids" [K] int32 (the image index `ids [B]` each key came from; -1 = none)}.

Model attention: CNN layers give the channel mean of squared activations (`activation_attention`);
ViT layers give attention rollout (Abnar & Zuidema 2020: head-mean attention plus identity, row-normalised,
multiplied through the layers; the class token's row over the patches) or the layer's own class-token attention
("cls"). "cam": for a CNN whose logits are a linear layer on the global average of its last map F4, Grad-CAM's
channel weights dy_k/dF4_c averaged over positions are w_ck / (h w), so Grad-CAM_k = ReLU(sum_c w_ck F4_c) / (h w):
ReLU of "cam" is Grad-CAM exactly, up to that positive constant (Selvaraju et al. 2017, Sec. 3.1).

Momentum target (BYOL, MoCo v2): the non-"params" collection "target" holds a copy of the online tower's parameters
(encoder + projector); each training call on two views first updates it, target <- m target + (1 - m) online
(stop-gradient), then encodes both views with it in training mode (batch statistics; its running statistics are
never used and not kept). m is constant (MoCo) or BYOL's cosine schedule m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2
(Grill et al. 2020, Sec. 3.2) over K = `momentum_steps`, k = the target's own update count "target/steps" before
this call. The "queue" collection holds MoCo's keys `[K, P]`, the image index of each key and the write pointer;
each training call enqueues the target keys of view g. The trainer applies the model with every non-param
collection mutable and stores what it returns; with gradient accumulation "target" must advance once per optimiser
step (the method lists it in `Method.per_step_collections`), the queue once per micro-batch (every key enqueued).

Shuffle-BN emulation (MoCo v2 on one device, `bn_groups` = G > 1): in training the online tower normalises its 2B
views in G groups of consecutive rows (as G devices would), and the key encoder sees the rows in a random order,
normalised in G groups and put back in order, so a query and its positive key are normalised over different
samples (He et al. 2020, Sec. 3.3). The online running statistics become the mean of the groups'.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.cam import head_feature_map, headless_backbone

VIT_ATTENTION = ("rollout", "cls")
_EPS = 1e-8


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x||_2 along `axis` (float32; a zero vector stays ~0)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _EPS)


def activation_attention(features: jax.Array) -> jax.Array:
    """Model attention `[B, h, w]` of a feature map `[B, h, w, C]`: the channel mean of squared activations
    (Zagoruyko & Komodakis 2017, F^2_mean), differentiable."""
    return jnp.mean(jnp.square(features.astype(jnp.float32)), axis=-1)


def is_vit(backbone: str) -> bool:
    return backbone.startswith("vit")


def vit_attention_maps(attention: Mapping[str, jax.Array], layers: Sequence[str], grid: int,
                       mode: str = "rollout") -> dict[str, jax.Array]:
    """Class-token attention over the patches `[B, grid, grid]` at each of `layers` ("encoder_layer_<i>") from the
    per-layer softmax weights `[B, heads, T, T]` (T = 1 + grid^2); see the module docstring for the modes."""
    if mode not in VIT_ATTENTION:
        raise ValueError(f"models/ssl.py: vit attention must be one of {VIT_ATTENTION}, got {mode!r}")
    wanted = {int(name.rsplit("_", 1)[-1]): name for name in layers}
    maps, rollout = {}, None
    for i in range(max(wanted) + 1):
        a = jnp.mean(attention[f"encoder_layer_{i}"].astype(jnp.float32), axis=1)  # [B, T, T]
        if mode == "rollout":
            a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1], dtype=a.dtype)
            a = a / jnp.sum(a, axis=-1, keepdims=True)
            rollout = a if rollout is None else a @ rollout
            a = rollout
        if i in wanted:
            maps[wanted[i]] = a[:, 0, 1:].reshape(a.shape[0], grid, grid)
    return maps


class MLPHead(nn.Module):
    """Dense "0" -> [BatchNorm "bn"] -> ReLU -> Dense "1" over the last axis (`[..., C] -> [..., out]`): SimCLR /
    MoCo v2's 2-layer projection head, BYOL's projector and predictor (with BN), or a per-location head on a
    feature map."""

    hidden: int
    out: int
    batch_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, name="0")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             name="bn")(x)
        return nn.Dense(self.out, dtype=self.dtype, name="1")(nn.relu(x)).astype(jnp.float32)


class Tower(nn.Module):
    """Encoder ("backbone", a headless registry network) + projection head ("projector"):
    `x -> {"pooled", "z", "attention": {layer: [B, h, w]}, "region_features", "last_map"}`."""

    backbone: str = "resnet50"
    backbone_kwargs: Mapping[str, Any] | None = None
    attention_layers: Sequence[str] = ("layer2", "layer3", "layer4")
    region_layer: str = "layer4"
    proj_hidden: int = 2048
    proj_dim: int = 256
    proj_bn: bool = False
    vit_attention: str = "rollout"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # the backbone's (conv_impl.IMPLS), unless backbone_kwargs sets one

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        net = headless_backbone(self, self.backbone, self.backbone_kwargs, self.dtype, self.conv_impl)
        if is_vit(self.backbone):
            out = net(x, train, return_attention=True)
            grid = out["features"]["patch_grid"]
            maps = vit_attention_maps(out["attention"], self.attention_layers, grid.shape[1], self.vit_attention)
            region, last = grid, grid
        else:
            out = net(x, train)
            feats = out["features"]
            maps = {name: activation_attention(feats[name]) for name in self.attention_layers}
            region, last = feats[self.region_layer], head_feature_map(self.backbone, feats)
        z = MLPHead(self.proj_hidden, self.proj_dim, self.proj_bn, self.dtype, name="projector")(out["pooled"], train)
        return {"pooled": out["pooled"].astype(jnp.float32), "z": z, "attention": maps,
                "region_features": region, "last_map": last}


class SSLModel(nn.Module):
    """See the module docstring. `predictor_hidden` > 0 adds BYOL's predictor; `region_head` adds the per-location
    head for the regional loss; `momentum` > 0 keeps a momentum target; `queue_size` > 0 keeps a MoCo queue;
    `bn_groups` > 1 emulates shuffle-BN. `single_view_batch_stats=False` trains one-view inputs (fine-tuning) with
    the encoder in inference mode: batch norm keeps the pretraining's running statistics (few-shot batches repeat a
    handful of images, whose batch statistics would replace them), dropout off."""

    backbone: str = "resnet50"
    backbone_kwargs: Mapping[str, Any] | None = None
    num_classes: int = 3
    attention_layers: Sequence[str] = ("layer2", "layer3", "layer4")
    region_layer: str = "layer4"
    proj_hidden: int = 2048
    proj_dim: int = 256
    proj_bn: bool = False
    predictor_hidden: int = 0
    region_head: bool = False
    momentum: float = 0.0
    momentum_schedule: str = "constant"  # constant | cosine (BYOL)
    momentum_steps: int = 0  # K of the cosine schedule (optimiser steps of pretraining)
    queue_size: int = 0
    bn_groups: int = 1  # > 1: shuffle-BN emulation (module docstring)
    vit_attention: str = "rollout"
    single_view_batch_stats: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # the backbone's (conv_impl.IMPLS), unless backbone_kwargs sets one

    def _tower_fields(self) -> dict[str, Any]:
        return dict(backbone=self.backbone, backbone_kwargs=self.backbone_kwargs,
                    attention_layers=tuple(self.attention_layers), region_layer=self.region_layer,
                    proj_hidden=self.proj_hidden, proj_dim=self.proj_dim, proj_bn=self.proj_bn,
                    vit_attention=self.vit_attention, dtype=self.dtype, conv_impl=self.conv_impl)

    @nn.compact
    def __call__(self, x: jax.Array, x2: jax.Array | None = None, ids: jax.Array | None = None,
                 train: bool = False) -> dict[str, Any]:
        calls = self._progress(train)
        classifier = nn.Dense(self.num_classes, name="classifier")
        grouped = train and x2 is not None and self.bn_groups > 1 and not self.is_initializing()
        tower = None if grouped else Tower(**self._tower_fields(), name="online")
        if x2 is None:  # fine-tuning with frozen normalisation statistics unless `single_view_batch_stats`
            out = tower(x, train and self.single_view_batch_stats)
            logits = classifier(out["pooled"]).astype(jnp.float32)
            res = {"embedding": out["pooled"], "logits": logits, "attention": out["attention"], "train_calls": calls}
            if not is_vit(self.backbone):
                kernel = classifier.variables["params"]["kernel"]
                res["cam"] = jnp.einsum("bhwc,ck->bhwk", out["last_map"].astype(jnp.float32), kernel)
            return res
        n = x.shape[0]
        both = jnp.concatenate([x, x2], axis=0)  # one pass: batch statistics over the 2N views
        out = self._grouped_online(both) if grouped else tower(both, train)
        if self.is_initializing():
            classifier(out["pooled"])  # creates the fine-tuning head's parameters
        res = {"z_a": out["z"][:n], "z_g": out["z"][n:], "embedding_a": out["pooled"][:n],
               "attention_a": {k: v[:n] for k, v in out["attention"].items()},
               "attention_g": {k: v[n:] for k, v in out["attention"].items()}}
        if self.predictor_hidden > 0:
            p = MLPHead(self.predictor_hidden, self.proj_dim, True, self.dtype, name="predictor")(out["z"], train)
            res["p_a"], res["p_g"] = p[:n], p[n:]
        if self.region_head:
            dense = MLPHead(self.proj_hidden, self.proj_dim, False, self.dtype, name="region_head")(
                out["region_features"], train)
            res["dense_a"], res["dense_g"] = dense[:n], dense[n:]
        if self.momentum > 0:
            zt = self._momentum_target(both, train)
            res["zt_a"], res["zt_g"] = zt[:n], zt[n:]
            if self.queue_size > 0:
                ids = jnp.full((n,), -1, jnp.int32) if ids is None else ids.astype(jnp.int32)
                res["queue"], res["queue_ids"] = self._queue(res["zt_g"], ids, train)
        return res

    def _progress(self, train: bool) -> jax.Array:
        """The "progress" count of training calls (micro-batches) before this one (int32 []); a training call adds
        one."""
        steps = self.variable("progress", "steps", lambda: jnp.zeros((), jnp.int32))
        before = steps.value
        if train and not self.is_initializing():
            steps.value = before + 1
        return before

    def momentum_at(self, step: jax.Array) -> jax.Array:
        """m after `step` target updates: constant, or BYOL's cosine schedule from `momentum` to 1 over
        `momentum_steps` (Grill et al. 2020, Sec. 3.2: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2)."""
        if self.momentum_schedule == "constant":
            return jnp.asarray(self.momentum, jnp.float32)
        if self.momentum_schedule != "cosine" or self.momentum_steps < 1:
            raise ValueError(f"models/ssl.py: momentum_schedule must be 'constant' or 'cosine' with momentum_steps "
                             f">= 1, got {self.momentum_schedule!r}, {self.momentum_steps}")
        k = jnp.minimum(step.astype(jnp.float32) / self.momentum_steps, 1.0)
        return 1.0 - (1.0 - self.momentum) * (jnp.cos(jnp.pi * k) + 1.0) / 2.0

    def _grouped_tower(self, variables: dict, x: jax.Array, perm: jax.Array | None) -> tuple[dict, dict]:
        """The tower in training mode on `x[perm]` with batch norm over `bn_groups` groups of consecutive rows,
        outputs back in the order of `x`; returns (outputs, the groups' mean new batch statistics)."""
        g = self.bn_groups
        if x.shape[0] % g:
            raise ValueError(f"models/ssl.py: bn_groups={g} must divide the {x.shape[0]} views of a batch")
        xs = x if perm is None else x[perm]
        xs = xs.reshape(g, x.shape[0] // g, *x.shape[1:])

        def one(xg):
            return Tower(**self._tower_fields(), parent=None).apply(variables, xg, True, mutable=["batch_stats"])

        out, new = jax.vmap(one)(xs)
        out = jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:]), out)
        if perm is not None:
            inverse = jnp.argsort(perm)
            out = jax.tree.map(lambda y: y[inverse], out)
        return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), new.get("batch_stats", {}))

    def _grouped_online(self, both: jax.Array) -> dict:
        """The online tower with batch norm over consecutive groups (a device each); running statistics = mean."""
        variables = {"params": self.variables["params"]["online"]}
        if "online" in self.variables.get("batch_stats", {}):  # a ViT with a plain projector has none
            variables["batch_stats"] = self.variables["batch_stats"]["online"]
        out, stats = self._grouped_tower(variables, both, None)
        if "batch_stats" in variables:
            self.put_variable("batch_stats", "online", stats)
        return out

    def _momentum_target(self, both: jax.Array, train: bool) -> jax.Array:
        """Updates the "target" copy of the online tower's parameters by EMA (and its update count), then encodes
        `both` with it."""
        online = self.variables["params"]["online"]
        target = self.variable("target", "params", lambda: jax.tree.map(jnp.array, online))
        steps = self.variable("target", "steps", lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            m = self.momentum_at(steps.value)
            steps.value = steps.value + 1
            target.value = jax.tree.map(lambda t, o: m * t + (1.0 - m) * jax.lax.stop_gradient(o), target.value,
                                        online)
        # Training mode: batch statistics; the fresh running statistics it returns are dropped (never used).
        if train and self.bn_groups > 1 and not self.is_initializing():  # shuffle-BN: keys in a random order
            key = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.PRNGKey(0)
            out, _ = self._grouped_tower({"params": target.value}, both, jax.random.permutation(key, both.shape[0]))
        else:
            out, _ = Tower(**self._tower_fields(), parent=None).apply(
                {"params": target.value}, both, True, mutable=["batch_stats"])
        return jax.lax.stop_gradient(out["z"])

    def _queue(self, keys: jax.Array, ids: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """MoCo's queue of past keys `[K, P]` and their image indices `[K]` (values before this call); enqueues
        `keys [N, P]` with `ids [N]` when training."""
        queue = self.variable("queue", "keys", lambda: l2_normalize(
            jax.random.normal(self.make_rng("params"), (self.queue_size, self.proj_dim))))
        queue_ids = self.variable("queue", "ids", lambda: jnp.full((self.queue_size,), -1, jnp.int32))
        ptr = self.variable("queue", "ptr", lambda: jnp.zeros((), jnp.int32))
        before, before_ids = queue.value, queue_ids.value
        if train and not self.is_initializing():
            queue.value = jax.lax.dynamic_update_slice(before, l2_normalize(keys), (ptr.value, 0))
            queue_ids.value = jax.lax.dynamic_update_slice(before_ids, ids, (ptr.value,))
            ptr.value = (ptr.value + keys.shape[0]) % self.queue_size
        return before, before_ids
