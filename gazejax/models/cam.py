"""GG-CAM's CAM layer (Zhu et al., Sec. 3.1), which replaces a classifier's GAP + linear head and returns the class
activation map Omega explicitly, and `GGCAMModel`, a gazejax 2D backbone with that layer plus GG-CAM's three
learnable scalars (log alpha of Eq. 10, log sigma_sm and log sigma_ce of Eq. 11).

Channels-last: features `[B, h, w, C_in]`, CAM `[B, h, w, C]`, logits `[B, C]`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models import build

Dtype = Any

# Table 1, Zhu et al.: the tuned initial sigma_sm per backbone family; sigma_ce starts at 1 (Sec. 3.4). The
# reference code starts log sigma_sm at -16 (EffNet) / -23 (ResNet) and log sigma_ce at 7.0; pass
# `sigma_sm_init=math.exp(-16.0)`, `sigma_ce_init=math.exp(7.0)` to reproduce it. EffNet's 1.4e-11 (e^-25) overflows
# float32 Adam; the GG-CAM method starts at e^-16 and refuses such values (methods/ggcam/losses.check_sigma_start).
SIGMA_SM_INIT = {"efficientnet": 1.4e-11, "resnet": 2.0e-9}
SIGMA_CE_INIT = 1.0

# Backbone family -> how to get the map its own head global-averages (its "pooled" input), from its features.
_HEAD_MAPS = {
    "resnet": lambda f: f["layer4"],
    "densenet": lambda f: nn.relu(f["norm5"]),  # torchvision pools relu(norm5); "norm5" is pre-ReLU
    "efficientnet": lambda f: f["final_conv"],
    "mobilenet": lambda f: f["final_conv"],
}


def backbone_family(backbone: str) -> str:
    """The family (`resnet`, `densenet`, `efficientnet`, `mobilenet`) of a registry backbone name.

    Raises a one-line ValueError for names without a spatial head map (e.g. `vit_b_16`, whose head reads the
    class token, so it has no CAM).
    """
    for family in _HEAD_MAPS:
        if backbone.startswith(family):
            return family
    raise ValueError(f"cam.py: backbone {backbone!r} has no convolutional head map; expected one of the "
                     f"families {', '.join(_HEAD_MAPS)} (resnet18, resnet50, densenet201, efficientnet_b0, "
                     f"efficientnet_v2_s, mobilenet_v2)")


def head_feature_map(backbone: str, features: Mapping[str, jax.Array]) -> jax.Array:
    """The deepest feature map `[B, H/32, W/32, C]` of a gazejax 2D backbone: the map its own classifier head
    global-averages (so GAP of it equals the backbone's "pooled"): resnet `layer4`, densenet relu(`norm5`),
    efficientnet / mobilenet `final_conv`."""
    return _HEAD_MAPS[backbone_family(backbone)](features)


def headless_backbone(parent: nn.Module, backbone: str, kwargs: Mapping[str, Any] | None, dtype: Dtype,
                      conv_impl: str = "auto") -> nn.Module:
    """`build(backbone, num_classes=0, dtype=dtype, conv_impl=conv_impl, **kwargs)` as the child "backbone" of
    `parent` (call inside `parent`'s compact method), so its parameters sit under "backbone" exactly as in the
    plain backbone. A "conv_impl" in `kwargs` takes precedence over the argument."""
    # `build`'s first parameter is the registry name, so the Flax name is given by re-binding an unbound module.
    net = build(backbone, **{"dtype": dtype, "conv_impl": conv_impl, **dict(kwargs or {}), "num_classes": 0,
                             "parent": None})
    return net.clone(parent=parent, name="backbone")


class CAMLayer(nn.Module):
    """CAM layer `A [B, h, w, C_in] -> (logits [B, C], Omega [B, h, w, C])` (Sec. 3.1, Zhu et al.).

    Omega_c = sum_k Lambda_ck A_k (Eq. 4) and y_c = mean_ij Omega_c,ij + lambda_c (Eq. 5). The parameters are
    exactly those of the `nn.Dense(num_classes)` it replaces ("kernel" `[C_in, C]` = Lambda^T, "bias" `[C]` =
    lambda, Dense's initialisers), so a GAP + linear checkpoint maps onto it unchanged and, with
    `sum_channels=True`, gives the same logits. `sum_channels=False` is the reference code's variant, which
    averages over the channels (Omega / C_in), so its logits are (Dense logits - bias) / C_in + bias.
    Omega and the logits are float32.
    """

    num_classes: int
    sum_channels: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        if features.ndim != 4:
            raise ValueError(f"cam.py: CAMLayer expects features [B, h, w, C_in], got shape {features.shape}")
        c_in = features.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (c_in, self.num_classes), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.num_classes,), jnp.float32)
        cam = jnp.einsum("bhwk,kc->bhwc", features.astype(self.dtype), kernel.astype(self.dtype))  # Eq. 4
        cam = cam.astype(jnp.float32)
        if not self.sum_channels:
            cam = cam / c_in
        logits = jnp.mean(cam, axis=(1, 2)) + bias  # Eq. 5-6
        return logits, cam


class LinearHeadClassifier(nn.Module):
    """The "standard" network: `x [B, H, W, C_in] -> {"logits": [B, K], "cam": [B, h, w, K]}`.

    The registry backbone (no head, under "backbone") -> its own global average pool -> dropout (the backbone's
    head rate unless `dropout` is given) -> Dense "classifier", i.e. torchvision's classifier with K outputs. "cam"
    is Eq. 4 of that Dense, sum_k Lambda_ck A_k on the head's feature map A (evaluation only: no loss reads it).
    """

    backbone: str = "resnet50"
    num_classes: int = 3
    backbone_kwargs: Mapping[str, Any] | None = None
    dropout: float | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        net = headless_backbone(self, self.backbone, self.backbone_kwargs, self.dtype)
        out = net(x, train)
        rate = getattr(net, "dropout", 0.0) if self.dropout is None else self.dropout
        pooled = nn.Dropout(rate, deterministic=not train)(out["pooled"]) if rate > 0 else out["pooled"]
        head = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")
        logits = head(pooled).astype(jnp.float32)
        feats = head_feature_map(self.backbone, out["features"]).astype(jnp.float32)
        cam = jnp.einsum("bhwk,kc->bhwc", feats, head.variables["params"]["kernel"])  # Eq. 4
        return {"logits": logits, "cam": cam}


class GGCAMModel(nn.Module):
    """GG-CAM classifier `x [B, H, W, in_channels] -> {"logits", "cam", "log_alpha", "log_sigma_sm",
    "log_sigma_ce"}` (Zhu et al., Fig. 1b).

    A registry backbone (`backbone`, built with `num_classes=0` under the name "backbone", so its parameter tree
    is the plain backbone's) gives its deepest map A (`head_feature_map`), and a `CAMLayer` ("cam_layer") gives
    logits `[B, num_classes]` and Omega `[B, H/32, W/32, num_classes]`. The model owns exactly three more
    trainable scalars: "log_alpha" (alpha = exp > 0, Eq. 10; init 0 => alpha = 1), "log_sigma_sm" and
    "log_sigma_ce" (Eq. 11; sigma = exp > 0). Their inits are the paper's Table 1 by backbone family
    (`SIGMA_SM_INIT`) and sigma_ce = 1; other backbones need `sigma_sm_init`. So the parameter count is the
    linear-head backbone's plus 3.

    Attributes:
      backbone: a registry name (resnet18/50, densenet201, efficientnet_b0/v2_s, mobilenet_v2).
      num_classes: C (3 in the paper: normal, cardiomegaly, pneumonia).
      backbone_kwargs: extra backbone constructor arguments (e.g. in_channels=1, width_mult for tiny tests).
      sum_channels: Eq. 4 (True) or the reference code's channel mean (False), see `CAMLayer`.
      dropout: rate of the torchvision head's dropout, None = the backbone's own (0.2 EfficientNet/MobileNet,
        0 ResNet/DenseNet). It drops whole channels of A (one mask per sample and channel, shared by all
        positions), which gives exactly the logits of dropout on the pooled vector before the linear layer.
        Uses the "dropout" RNG stream when training.
      sigma_sm_init / sigma_ce_init: initial sigmas (None = Table 1 / 1.0); the params hold their logs.
      dtype: computation dtype of backbone and CAM (parameters, outputs float32).
      conv_impl: the backbone's convolution formulation (`conv_impl.IMPLS`) unless `backbone_kwargs` sets one.
    """

    backbone: str = "efficientnet_v2_s"
    num_classes: int = 3
    backbone_kwargs: Mapping[str, Any] | None = None
    sum_channels: bool = True
    dropout: float | None = None
    sigma_sm_init: float | None = None
    sigma_ce_init: float = SIGMA_CE_INIT
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        sigma_sm = self._sigma_sm_init()
        net = headless_backbone(self, self.backbone, self.backbone_kwargs, self.dtype, self.conv_impl)
        feats = head_feature_map(self.backbone, net(x, train)["features"])
        rate = getattr(net, "dropout", 0.0) if self.dropout is None else self.dropout
        if rate > 0:
            feats = nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train)(feats)
        logits, cam = CAMLayer(self.num_classes, self.sum_channels, self.dtype, name="cam_layer")(feats)
        chex.assert_shape(cam, (x.shape[0], *feats.shape[1:3], self.num_classes))
        return {"logits": logits, "cam": cam, "log_alpha": self._scalar("log_alpha", 0.0),
                "log_sigma_sm": self._scalar("log_sigma_sm", math.log(sigma_sm)),
                "log_sigma_ce": self._scalar("log_sigma_ce", math.log(self.sigma_ce_init))}

    def _scalar(self, name: str, init: float) -> jax.Array:
        """One trainable float32 scalar parameter (shape ()), initialised to `init`."""
        return self.param(name, nn.initializers.constant(init), (), jnp.float32)

    def _sigma_sm_init(self) -> float:
        family = backbone_family(self.backbone)
        value = self.sigma_sm_init if self.sigma_sm_init is not None else SIGMA_SM_INIT.get(family)
        if value is None:
            raise ValueError(f"cam.py: GG-CAM's Table 1 has no sigma_sm for backbone {self.backbone!r}; "
                             f"pass sigma_sm_init (Table 1: {SIGMA_SM_INIT})")
        if value <= 0 or self.sigma_ce_init <= 0:
            raise ValueError(f"cam.py: sigma inits must be > 0, got sigma_sm={value}, sigma_ce={self.sigma_ce_init}")
        return float(value)
