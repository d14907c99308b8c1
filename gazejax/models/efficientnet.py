"""EfficientNet-B0 (Tan & Le 2019) and EfficientNetV2-S (Tan & Le 2021), torchvision layout, Flax Linen, NHWC.

Parameter names mirror torchvision's module paths with two simplifications that `from_torch` undoes: a block's
inner `block` Sequential is flattened (torch `features.2.0.block.1.0` = flax `features/2/0/1/0`) and the head is
`classifier` (torch `classifier.1`). `efficientnet_b0(num_classes=1000)` / `efficientnet_v2_s(num_classes=1000)`
have exactly torchvision's 5,288,548 / 21,458,488 parameters. BatchNorm eps follows torchvision: 1e-5 for B0
(torchvision's default `nn.BatchNorm2d`), 1e-3 for V2-S.

`__call__(x [B, H, W, in_channels], train=False)` returns
`{"logits": [B, num_classes] or None, "features": {...}, "pooled": [B, C]}` with features
- "stride2", "stride4", "stride8", "stride16", "stride32": the output of the last stage at that stride,
  [B, H/s, W/s, C_s] (B0: 16, 24, 40, 112, 320 channels; V2-S: 24, 48, 64, 160, 256)
- "final_conv": the 1x1 conv-BN-SiLU before pooling, [B, H/32, W/32, C] (C = 1280 for both)
"pooled" is the global average of "final_conv". Training uses the "dropout" RNG stream (classifier dropout
and stochastic depth). `refine` (optional, a function `[B, H/32, W/32, C_32] -> same shape`) is applied to the
last stage's output between "stride32" (kept unrefined) and the final 1x1 conv: the hook through which a method
inserts a block there (SAN + AAB's 2D classifier) without splitting the backbone's parameter tree.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.backbone_utils import (ConvNormAct, classifier_head, global_avg_pool, make_divisible,
                                           outputs, prepare_input, torch_conv)

# (block kind, expand ratio, kernel, stride, input channels, output channels, layers): torchvision's tables.
B0_STAGES = (
    ("mb", 1, 3, 1, 32, 16, 1),
    ("mb", 6, 3, 2, 16, 24, 2),
    ("mb", 6, 5, 2, 24, 40, 2),
    ("mb", 6, 3, 2, 40, 80, 3),
    ("mb", 6, 5, 1, 80, 112, 3),
    ("mb", 6, 5, 2, 112, 192, 4),
    ("mb", 6, 3, 1, 192, 320, 1),
)
V2_S_STAGES = (
    ("fused", 1, 3, 1, 24, 24, 2),
    ("fused", 4, 3, 2, 24, 48, 4),
    ("fused", 4, 3, 2, 48, 64, 4),
    ("mb", 4, 3, 2, 64, 128, 6),
    ("mb", 6, 3, 1, 128, 160, 9),
    ("mb", 6, 3, 2, 160, 256, 15),
)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(silu(fc1(GAP(x))))); fc1/fc2 are 1x1 convs with bias, as in torchvision."""

    squeeze: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        ci = self.conv_impl
        s = nn.silu(torch_conv(self.squeeze, 1, use_bias=True, dtype=self.dtype, conv_impl=ci, name="fc1")(s))
        s = torch_conv(x.shape[-1], 1, use_bias=True, dtype=self.dtype, conv_impl=ci, name="fc2")(s)
        return x * nn.sigmoid(s)


class MBConv(nn.Module):
    """(Fused-)MBConv block; [B, H, W, C_in] -> [B, H/stride, W/stride, out].

    "mb": [1x1 expand] -> kxk depthwise -> SE -> 1x1 project; "fused": kxk expand -> 1x1 project (or a single
    kxk conv when expand_ratio == 1). Residual with stochastic depth (per sample) when the shape is unchanged.
    Children are numbered like torchvision's `block` Sequential.
    """

    kind: str
    expand_ratio: float
    kernel: int
    stride: int
    out: int
    sd_prob: float = 0.0
    eps: float = 1e-5
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        c_in = x.shape[-1]
        expanded = make_divisible(c_in * self.expand_ratio, 8)

        def conv(idx: int, c: int, k: int, s: int = 1, g: int = 1, act=nn.silu) -> ConvNormAct:
            return ConvNormAct(c, k, s, g, act, self.eps, self.dtype, self.conv_impl, name=str(idx))

        layers = []
        if self.kind == "fused":
            if expanded != c_in:
                layers += [conv(0, expanded, self.kernel, self.stride), conv(1, self.out, 1, act=None)]
            else:
                layers += [conv(0, self.out, self.kernel, self.stride)]
        else:
            if expanded != c_in:
                layers.append(conv(len(layers), expanded, 1))
            layers.append(conv(len(layers), expanded, self.kernel, self.stride, expanded))
            layers.append(SqueezeExcitation(max(1, c_in // 4), self.dtype, self.conv_impl, name=str(len(layers))))
            layers.append(conv(len(layers), self.out, 1, act=None))
        y = x
        for layer in layers:
            y = layer(y, train) if isinstance(layer, ConvNormAct) else layer(y)
        if self.stride != 1 or c_in != self.out:
            return y
        return x + _stochastic_depth(self, y, self.sd_prob, train)


def _stochastic_depth(module: nn.Module, y: jnp.ndarray, prob: float, train: bool) -> jnp.ndarray:
    """torchvision StochasticDepth(mode="row"): drop the residual branch per sample, rescale by 1/(1 - prob)."""
    if not train or prob <= 0.0:
        return y
    keep = 1.0 - prob
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (y.shape[0], 1, 1, 1))
    return y * mask.astype(y.dtype) / keep


class EfficientNetStage(nn.Module):
    """One torchvision `features.i` Sequential of MBConv blocks named "0", "1", ..."""

    kind: str
    expand_ratio: float
    kernel: int
    stride: int
    out: int
    sd_probs: Sequence[float]
    eps: float = 1e-5
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        block = nn.remat(MBConv, static_argnums=(2,)) if self.remat else MBConv
        for j, sd_prob in enumerate(self.sd_probs):
            x = block(self.kind, self.expand_ratio, self.kernel, self.stride if j == 0 else 1, self.out, sd_prob,
                       self.eps, self.dtype, self.conv_impl, name=str(j))(x, train)
        return x


class EfficientNetFeatures(nn.Module):
    """torchvision's `features`: stem "0", stages "1".."n", final 1x1 conv "n+1"; returns (x, feature dict)."""

    stages: Sequence[tuple]
    last_channel: int
    stochastic_depth_prob: float
    eps: float
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, refine: Callable | None = None
                 ) -> tuple[jnp.ndarray, dict]:
        x = ConvNormAct(self.stages[0][4], 3, 2, activation=nn.silu, eps=self.eps, dtype=self.dtype,
                        conv_impl=self.conv_impl, name="0")(x, train)
        stride, feats = 2, {"stride2": x}
        total, block_id = sum(s[6] for s in self.stages), 0
        for i, (kind, ratio, kernel, s, _, out, layers) in enumerate(self.stages):
            # Stochastic depth grows linearly with the block index over the whole network (torchvision).
            probs = [self.stochastic_depth_prob * (block_id + j) / total for j in range(layers)]
            block_id += layers
            x = EfficientNetStage(kind, ratio, kernel, s, out, probs, self.eps, self.dtype, self.remat,
                                  self.conv_impl, name=str(i + 1))(x, train)
            stride *= s
            feats[f"stride{stride}"] = x
        if refine is not None:
            x = apply_refine(refine, x, "efficientnet.py")
        x = ConvNormAct(self.last_channel, 1, activation=nn.silu, eps=self.eps, dtype=self.dtype,
                        conv_impl=self.conv_impl, name=str(len(self.stages) + 1))(x, train)
        feats["final_conv"] = x
        return x, feats


class EfficientNet(nn.Module):
    """torchvision-compatible EfficientNet (V1 MBConv or V2 Fused-MBConv stages); see the module docstring.

    Attributes:
      stages: stage table (see B0_STAGES); width_mult / depth_mult scale its channels (rounded to multiples
        of 8) and depths (ceil) like torchvision's `_MBConvConfig`; small values give tiny test nets.
      last_channel: channels of the final 1x1 conv; None = 4 x the last stage's (the B-series rule).
      bn_eps: BatchNorm epsilon (torchvision: 1e-5 for B0, 1e-3 for V2).
      dropout, stochastic_depth_prob: classifier dropout and maximal stochastic-depth rate (0.2, 0.2).
      num_classes: classes of the `classifier` head; 0 = no head (logits None).
      in_channels / stem_mode: see backbone_utils.prepare_input.
      dtype: computation dtype (parameters stay float32).
      remat: recompute each (Fused-)MBConv block's activations in the backward pass instead of storing them.
      conv_impl: convolution formulation (`gazejax.models.conv_impl.IMPLS`); parameters are the same whichever.
    """

    stages: Sequence[tuple] = B0_STAGES
    width_mult: float = 1.0
    depth_mult: float = 1.0
    last_channel: int | None = None
    bn_eps: float = 1e-5
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2
    num_classes: int = 1000
    in_channels: int = 3
    stem_mode: str = "repeat"
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    def scaled_stages(self) -> tuple:
        """The stage table after width/depth scaling."""
        def ch(c: int) -> int:
            return make_divisible(c * self.width_mult, 8)

        return tuple((k, r, kern, s, ch(c_in), ch(c_out), int(math.ceil(n * self.depth_mult)))
                     for k, r, kern, s, c_in, c_out, n in self.stages)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, refine: Callable | None = None) -> dict:
        x = prepare_input(x, self.in_channels, self.stem_mode, self.dtype)
        stages = self.scaled_stages()
        last = self.last_channel if self.last_channel is not None else 4 * stages[-1][5]
        x, feats = EfficientNetFeatures(stages, last, self.stochastic_depth_prob, self.bn_eps, self.dtype,
                                        self.remat, self.conv_impl, name="features")(x, train, refine)
        pooled = global_avg_pool(x)
        logits = classifier_head(pooled, self.num_classes, "classifier", self.dtype, self.dropout, train)
        return outputs(logits, feats, pooled)


def apply_refine(refine: Callable, x: jnp.ndarray, where: str) -> jnp.ndarray:
    """`refine(x)`, which must keep x's shape (the final 1x1 conv's input channels fix its parameters)."""
    y = refine(x)
    if y.shape != x.shape:
        raise ValueError(f"{where}: refine must keep the stride-32 map's shape {x.shape}, got {y.shape}")
    return y


def efficientnet_b0(**kwargs) -> EfficientNet:
    """EfficientNet-B0; 5,288,548 parameters with num_classes=1000."""
    return EfficientNet(**{"stages": B0_STAGES, "bn_eps": 1e-5, **kwargs})


def efficientnet_v2_s(**kwargs) -> EfficientNet:
    """EfficientNetV2-S; 21,458,488 parameters with num_classes=1000 (BatchNorm eps 1e-3)."""
    width = kwargs.get("width_mult", 1.0)
    return EfficientNet(**{"stages": V2_S_STAGES, "last_channel": make_divisible(1280 * width, 8), "bn_eps": 1e-3,
                           **kwargs})
