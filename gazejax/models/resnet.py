"""ResNet-18/50 (He et al. 2016, torchvision's v1.5 layout: stride on the 3x3 conv) in Flax Linen, NHWC.

Parameter names mirror torchvision's module paths (`conv1`, `bn1`, `layer1/0/conv1`, `layer2/0/downsample/0`,
`fc`), so `gazejax.models.convert.from_torch` maps a torchvision state dict one to one and
`resnet18(num_classes=1000)` / `resnet50(num_classes=1000)` have exactly torchvision's 11,689,512 / 25,557,032
parameters.

`__call__(x [B, H, W, in_channels], train=False)` returns
`{"logits": [B, num_classes] or None, "features": {...}, "pooled": [B, C4]}` with features
- "stem":   relu(bn1(conv1(x))), [B, H/2, W/2, w]      (w = `width`, 64 in torchvision)
- "layer1": [B, H/4, W/4, w * e]    (e = 1 for BasicBlock, 4 for Bottleneck)
- "layer2": [B, H/8, W/8, 2 w e]
- "layer3": [B, H/16, W/16, 4 w e]
- "layer4": [B, H/32, W/32, 8 w e]  (= C4; "pooled" is its global average)
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gazejax.models.backbone_utils import (batch_norm, classifier_head, global_avg_pool,
                                           outputs, prepare_input, torch_conv)
from gazejax.models.layers import max_pool_window


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; [B, H, W, C_in] -> [B, H/stride, W/stride, planes]."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion: int = 1
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        y = torch_conv(self.planes, 3, self.stride, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, name="bn1")(y))
        y = torch_conv(self.planes, 3, dtype=self.dtype, conv_impl=self.conv_impl, name="conv2")(y)
        y = batch_norm(train, self.dtype, name="bn2")(y)
        return nn.relu(y + _shortcut(x, self.planes, self.stride, train, self.dtype, self.conv_impl))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, residual; [B, H, W, C_in] -> [B, H/s, W/s, 4 planes]."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion: int = 4
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        out = self.planes * self.expansion
        y = torch_conv(self.planes, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, name="bn1")(y))
        y = torch_conv(self.planes, 3, self.stride, dtype=self.dtype, conv_impl=self.conv_impl, name="conv2")(y)
        y = nn.relu(batch_norm(train, self.dtype, name="bn2")(y))
        y = torch_conv(out, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv3")(y)
        y = batch_norm(train, self.dtype, name="bn3")(y)
        return nn.relu(y + _shortcut(x, out, self.stride, train, self.dtype, self.conv_impl))


def _shortcut(x: jnp.ndarray, out: int, stride: int, train: bool, dtype: Any, conv_impl: str) -> jnp.ndarray:
    """Identity, or torchvision's `downsample` (1x1 strided conv "0" + BN "1") when the shape changes."""
    if stride == 1 and x.shape[-1] == out:
        return x
    # Created inside the calling block's compact scope, so the path is <block>/downsample/{0,1}.
    return _Downsample(out, stride, dtype, conv_impl, name="downsample")(x, train)


class _Downsample(nn.Module):
    features: int
    stride: int
    dtype: Any
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = torch_conv(self.features, 1, self.stride, dtype=self.dtype, conv_impl=self.conv_impl, name="0")(x)
        return batch_norm(train, self.dtype, name="1")(x)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetStage(nn.Module):
    """torchvision's `layerK`: `num_blocks` blocks named "0", "1", ...; the first one carries the stride."""

    block: str
    planes: int
    num_blocks: int
    stride: int
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        block = nn.remat(_BLOCKS[self.block], static_argnums=(2,)) if self.remat else _BLOCKS[self.block]
        for j in range(self.num_blocks):
            x = block(self.planes, self.stride if j == 0 else 1, self.dtype, conv_impl=self.conv_impl,
                      name=str(j))(x, train)
        return x


class ResNet(nn.Module):
    """torchvision-compatible ResNet; see the module docstring for inputs and outputs.

    Attributes:
      block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101/152).
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      num_classes: classes of the `fc` head; 0 = no head (logits None).
      in_channels / stem_mode: input channels; with 1 channel "repeat" tiles grey to RGB, "adapt" builds a
        1-channel conv1 (see backbone_utils.prepare_input).
      width: base width (64 in torchvision); stage i has width * 2**i planes. Small values give tiny test nets.
      dtype: computation dtype (parameters stay float32).
      remat: recompute each residual block's activations in the backward pass instead of storing them.
      conv_impl: convolution formulation (`gazejax.models.conv_impl.IMPLS`); parameters are the same whichever.
    """

    block: str = "basic"
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000
    in_channels: int = 3
    stem_mode: str = "repeat"
    width: int = 64
    dtype: Any = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict:
        if self.block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {self.block!r}")
        x = prepare_input(x, self.in_channels, self.stem_mode, self.dtype)
        x = torch_conv(self.width, 7, 2, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.dtype, name="bn1")(x))
        features = {"stem": x}
        x = max_pool_window(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            x = ResNetStage(self.block, self.width * 2**i, num_blocks, 1 if i == 0 else 2, self.dtype,
                            self.remat, self.conv_impl, name=f"layer{i + 1}")(x, train)
            features[f"layer{i + 1}"] = x
        pooled = global_avg_pool(x)
        logits = classifier_head(pooled, self.num_classes, "fc", self.dtype)
        return outputs(logits, features, pooled)


def resnet18(**kwargs) -> ResNet:
    """ResNet-18: BasicBlock, (2, 2, 2, 2); 11,689,512 parameters with num_classes=1000."""
    return ResNet(**{"block": "basic", "stage_sizes": (2, 2, 2, 2), **kwargs})


def resnet50(**kwargs) -> ResNet:
    """ResNet-50: Bottleneck, (3, 4, 6, 3); 25,557,032 parameters with num_classes=1000."""
    return ResNet(**{"block": "bottleneck", "stage_sizes": (3, 4, 6, 3), **kwargs})
