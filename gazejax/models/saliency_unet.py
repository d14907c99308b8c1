"""Saliency UNets of CXRGazeLearn (Qiu et al.) and its baselines: the Res_SE-UNet with an optional DenseNet feature
injected at the decoder start, the plain UNet (UNet_S), MT-UNet (Zhu et al.) and the full dual-encoder model.

All maps are channels-last: images `[B, H, W, 1]` (H, W multiples of 32), saliency logits `[B, H, W, 1]` (a softmax
over the flattened map gives the predicted gaze distribution). Blocks follow REFERENCE_NOTES (CXRGazeLearn / MT-UNet
code): Res_SE encoder block = conv3-BN-ReLU-conv3-BN + 3x3 conv shortcut, ReLU, squeeze-excitation (reduction 16);
plain block = 2 x (conv3-BN-ReLU); up-conv = nearest x2 upsampling + conv3-BN-ReLU; convolutions carry biases as
torch's default. Widths `(64, 128, 256, 512, 1024)` in the paper, four max-pools.
"""
from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.analysis.gradcam import grad_cam_from_head
from gazejax.models.backbone_utils import batch_norm, global_avg_pool, prepare_input
from gazejax.models.conv_impl import conv_general_dilated_for
from gazejax.models.densenet import DenseNetFeatures
from gazejax.models.layers import max_pool

ENCODER_BLOCKS = ("res_se", "plain")
ENCODER_CUTS = ("transition3", "denseblock4")  # paper ("before the last dense block") | reference code
GROUPS = ("densenet", "res_se_unet", "fusion")  # CXRGazeLearnNet's parts ("densenet" = features + dnet_head)


def _conv(features: int, kernel: int, dtype: Any, name: str | None = None, conv_impl: str = "auto") -> nn.Conv:
    """Conv2d with torch's 'same' padding and bias (torch nn.Conv2d defaults), computed as `conv_impl`."""
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                   conv_general_dilated=conv_general_dilated_for(conv_impl), name=name)


class ConvBNReLU(nn.Module):
    """conv3x3 (bias) -> BatchNorm -> ReLU; `[B, H, W, C_in] -> [B, H, W, features]`."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _conv(self.features, 3, self.dtype, name="conv", conv_impl=self.conv_impl)(x)
        return nn.relu(batch_norm(train, self.dtype, name="bn")(x))


class DoubleConv(nn.Module):
    """The plain UNet block, 2 x (conv3x3-BN-ReLU): UNet_S / MT-UNet encoder and every decoder block."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvBNReLU(self.features, self.dtype, self.conv_impl, name="conv1")(x, train)
        return ConvBNReLU(self.features, self.dtype, self.conv_impl, name="conv2")(x, train)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 relu(W1 GAP(x))) with bias-free W1 `[C, C/r]` and W2 `[C/r, C]` (Hu et al.; r = 16)."""

    reduction: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        s = global_avg_pool(x).astype(self.dtype)
        s = nn.relu(nn.Dense(max(1, c // self.reduction), use_bias=False, dtype=self.dtype, name="fc1")(s))
        s = nn.sigmoid(nn.Dense(c, use_bias=False, dtype=self.dtype, name="fc2")(s))
        return x * s[:, None, None, :]


class ResSEBlock(nn.Module):
    """Res_SE encoder block: relu(BN(conv3(relu(BN(conv3(x))))) + conv3_shortcut(x)), then squeeze-excitation."""

    features: int
    reduction: int = 16
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ci = self.conv_impl
        shortcut = _conv(self.features, 3, self.dtype, name="shortcut", conv_impl=ci)(x)
        y = ConvBNReLU(self.features, self.dtype, ci, name="conv1")(x, train)
        y = _conv(self.features, 3, self.dtype, name="conv2", conv_impl=ci)(y)
        y = batch_norm(train, self.dtype, name="bn2")(y)
        return SqueezeExcitation(self.reduction, self.dtype, name="se")(nn.relu(y + shortcut))


class UpConv(nn.Module):
    """Nearest-neighbour x2 upsampling, then conv3x3-BN-ReLU: `[B, h, w, C] -> [B, 2h, 2w, features]`."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return ConvBNReLU(self.features, self.dtype, self.conv_impl, name="up")(x, train)


class SaliencyHead(nn.Module):
    """conv3x3-BN-ReLU (C -> C), then conv1x1 -> 1: saliency logits `[B, H, W, 1]` (float32)."""

    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvBNReLU(x.shape[-1], self.dtype, self.conv_impl, name="conv")(x, train)
        return _conv(1, 1, self.dtype, name="out", conv_impl=self.conv_impl)(x).astype(jnp.float32)


class FusionHead(nn.Module):
    """Linear(hidden) -> Dropout -> ReLU -> Linear(num_classes) on `[B, D]` (MT-UNet's and CXRGazeLearn's head)."""

    num_classes: int = 3
    hidden: int = 64
    dropout: float = 0.25
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        x = nn.relu(nn.Dropout(self.dropout, deterministic=not train)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x).astype(jnp.float32)


class SaliencyUNet(nn.Module):
    """UNet saliency predictor `x [B, H, W, 1] (, injected [B, H/32, W/32, C]) -> dict`.

    Encoder: five blocks (`encoder="res_se"`: Res_SE-UNet; "plain": UNet_S / MT-UNet) of `widths`, max-pools
    between them, e1 at H ... e5 at H/16. Without `injected` the decoder is the standard UNet's: up-conv of e5 and
    skips e4..e1 through widths[3], ..., widths[0]. With it (CXRGazeLearn, Sec. III.B) the feature is up-convolved
    to e5's grid (widths[3] channels), concatenated with e5 and fused by a plain block (widths[3]) at the decoder
    start, then four up-steps with skips e4..e1 through widths[2], widths[1], widths[0], widths[0].
    Returns {"saliency": logits [B, H, W, 1], "decoder_pooled": GAP of the last decoder map [B, widths[0]],
    "bottleneck_pooled": GAP(e5) [B, widths[4]]}. `conv_impl`: convolution formulation (conv_impl.IMPLS).
    """

    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    encoder: str = "res_se"
    se_reduction: int = 16
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, injected: jax.Array | None = None, train: bool = False) -> dict:
        if self.encoder not in ENCODER_BLOCKS or len(self.widths) != 5:
            raise ValueError(f"saliency_unet.py: encoder must be one of {ENCODER_BLOCKS} with 5 widths, got "
                             f"{self.encoder!r}, {tuple(self.widths)}")
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"saliency_unet.py: expected [B, H, W, C] with H, W multiples of 32, got {x.shape}")
        w, skips, ci = tuple(int(v) for v in self.widths), [], self.conv_impl
        h = x.astype(self.dtype)
        for i, width in enumerate(w):
            if i:
                h = max_pool(h, 2)
            block = (ResSEBlock(width, self.se_reduction, self.dtype, ci, name=f"enc{i + 1}")
                     if self.encoder == "res_se" else DoubleConv(width, self.dtype, ci, name=f"enc{i + 1}"))
            h = block(h, train)
            skips.append(h)
        e5, dec_widths = skips.pop(), (w[3], w[2], w[1], w[0])
        h = e5
        if injected is not None:
            chex.assert_shape(injected, (x.shape[0], x.shape[1] // 32, x.shape[2] // 32, None))
            up = UpConv(w[3], self.dtype, ci, name="inject_up")(injected.astype(self.dtype), train)
            h = DoubleConv(w[3], self.dtype, ci, name="inject_fuse")(jnp.concatenate([e5, up], -1), train)
            dec_widths = (w[2], w[1], w[0], w[0])
        for level, (width, skip) in enumerate(zip(dec_widths, reversed(skips))):
            up = UpConv(width, self.dtype, ci, name=f"up{4 - level}")(h, train)
            h = DoubleConv(width, self.dtype, ci, name=f"dec{4 - level}")(jnp.concatenate([skip, up], -1), train)
        saliency = SaliencyHead(self.dtype, ci, name="head")(h, train)
        chex.assert_shape(saliency, (*x.shape[:3], 1))
        return {"saliency": saliency, "decoder_pooled": global_avg_pool(h), "bottleneck_pooled": global_avg_pool(e5)}


class MTUNet(nn.Module):
    """MT-UNet (Zhu et al.): a plain UNet whose classifier reads concat(GAP(e5), GAP(d2)) and whose saliency head
    reads d2; `x [B, H, W, 1] -> {"logits" [B, K], "saliency" [B, H, W, 1], "log_sigma_ce", "log_sigma_kl"}`.

    The two learnable log sigmas (init 0) weight CE and KL as `gazejax.losses.mtunet_weighting`.
    """

    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    num_classes: int = 3
    hidden: int = 64
    dropout: float = 0.25
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict:
        out = SaliencyUNet(self.widths, "plain", dtype=self.dtype, conv_impl=self.conv_impl, name="unet")(
            x, train=train)
        pooled = jnp.concatenate([out["bottleneck_pooled"], out["decoder_pooled"]], -1)
        logits = FusionHead(self.num_classes, self.hidden, self.dropout, self.dtype, name="classifier")(pooled, train)
        sigmas = {k: self.param(k, nn.initializers.zeros_init(), (), jnp.float32)
                  for k in ("log_sigma_ce", "log_sigma_kl")}
        return {"logits": logits, "saliency": out["saliency"], **sigmas}


class DenseNetEncoder(nn.Module):
    """The whole DenseNet-201 with a linear head on GAP(relu(norm5)), `x [B, H, W, 1] -> dict`: stage 1 of
    CXRGazeLearn, and alone the DNet201 / DNet201-CL baselines.

    Parameters: torchvision's "features/..." (all of them: a converted ImageNet checkpoint initialises them through
    `config.model.init_from`; enclosing models share this scope, so the names stay at their root) and "dnet_head".
    The grey image is repeated to 3 channels. Every layer is built and trained, the head reading relu(norm5) as
    torchvision's classifier does; `cut` only names the map handed to the saliency UNet: "transition3" (paper:
    "all layers before the last dense block", [B, H/32, W/32, C3]) or "denseblock4" (reference code,
    [B, H/32, W/32, C]). Returns {"map", "embedding" (GAP(relu(norm5)) [B, C], also the triplet embedding),
    "dnet_logits" [B, K], "gradcam" (when `gradcam`, by default in eval mode: Grad-CAM of every class at norm5's
    output, the network's last layer (pytorch-grad-cam's `features[-1]` for DenseNets), [B, H/32, W/32, K])}.
    """

    num_classes: int = 3
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 48, 32)
    num_init_features: int = 64
    bn_size: int = 4
    cut: str = "transition3"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, gradcam: bool | None = None) -> dict:
        if self.cut not in ENCODER_CUTS:
            raise ValueError(f"saliency_unet.py: encoder cut must be one of {ENCODER_CUTS}, got {self.cut!r}")
        norm5, feats = DenseNetFeatures(self.growth_rate, tuple(self.block_config), self.num_init_features,
                                        self.bn_size, 0.0, self.dtype, cut="", conv_impl=self.conv_impl,
                                        name="features")(prepare_input(x, 1, "repeat", self.dtype), train)
        norm5 = norm5.astype(jnp.float32)
        head = nn.Dense(self.num_classes, dtype=self.dtype, name="dnet_head")
        pooled = global_avg_pool(nn.relu(norm5))
        out = {"map": feats[self.cut], "embedding": pooled,
               "dnet_logits": head(pooled.astype(self.dtype)).astype(jnp.float32)}
        if (not train) if gradcam is None else gradcam:
            params = head.variables["params"]
            out["gradcam"] = grad_cam_from_head(  # the head as a pure function of norm5: relu, GAP, dnet_head
                norm5, lambda a: jnp.mean(nn.relu(a), axis=(1, 2)) @ params["kernel"] + params["bias"])
        return out


class CXRGazeLearnNet(nn.Module):
    """The dual-encoder multi-task UNet (Qiu et al., Fig. 1): `x [B, H, W, 1] -> dict`.

    DenseNet encoder (stage 1: "features/*", "dnet_head/*"), Res_SE-UNet with the DenseNet map injected at its
    decoder start (stage 2: "res_se_unet/*"), multi-scale fusion classifier on concat(GAP(DenseNet map),
    GAP(last decoder map)) -> Linear 64 -> Dropout 0.25 -> ReLU -> Linear 3 (stage 3: "fusion/*").
    `detach=True` stops the gradients of the saliency and fusion losses at the encoders they read (the paper
    freezes those in stages 2 and 3, so the result is the same and the backward pass much cheaper); False lets a
    stage fine-tune through them. `inference` (a call argument; names among `GROUPS`) runs those parts in
    inference mode even when `train` is True: BatchNorm on its running statistics, which it leaves alone, and no
    dropout, as a frozen stage asks (`Stage.frozen`). Outputs: "embedding" [B, C] (triplet), "dnet_logits"
    (stage 1b), "saliency" [B, H, W, 1], "logits" (fusion, stage 3), and "gradcam" [B, H/32, W/32, K] of the
    DenseNet head (eval only).
    """

    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    encoder_kwargs: dict | None = None
    hidden: int = 64
    dropout: float = 0.25
    detach: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS, of both encoders and the decoder

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, inference: Sequence[str] = ()) -> dict:
        unknown = set(inference) - set(GROUPS)
        if unknown:
            raise ValueError(f"saliency_unet.py: inference names {sorted(unknown)} are not parts of the model "
                             f"({', '.join(GROUPS)})")
        mode = {part: train and part not in inference for part in GROUPS}
        enc_kwargs = dict(self.encoder_kwargs or {})
        encoder = DenseNetEncoder(**enc_kwargs, dtype=self.dtype, conv_impl=self.conv_impl, name="densenet")
        nn.share_scope(self, encoder)  # "features/...", "dnet_head/..." at the root, as torchvision names them
        enc = encoder(x, mode["densenet"], gradcam=not train)
        stop = jax.lax.stop_gradient if self.detach else (lambda a: a)
        sal = SaliencyUNet(self.widths, "res_se", dtype=self.dtype, conv_impl=self.conv_impl,
                           name="res_se_unet")(x, stop(enc["map"]), mode["res_se_unet"])
        fused = stop(jnp.concatenate([enc["embedding"], sal["decoder_pooled"]], -1))
        logits = FusionHead(enc_kwargs.get("num_classes", 3), self.hidden, self.dropout, self.dtype,
                            name="fusion")(fused, mode["fusion"])
        out = {"embedding": enc["embedding"], "dnet_logits": enc["dnet_logits"], "saliency": sal["saliency"],
               "logits": logits}
        return out | ({"gradcam": enc["gradcam"]} if "gradcam" in enc else {})
