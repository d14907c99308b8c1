"""DenseNet-201 (Huang et al. 2017; torchvision layout) in Flax Linen, NHWC.

Parameter names mirror torchvision's (`features/conv0`, `features/denseblock1/denselayer1/norm1`,
`features/transition1/conv`, `features/norm5`, `classifier`), so `from_torch` maps a torchvision state dict one
to one and `densenet201(num_classes=1000)` has exactly torchvision's 20,013,928 parameters.

`__call__(x [B, H, W, in_channels], train=False)` returns
`{"logits": [B, num_classes] or None, "features": {...}, "pooled": [B, C]}` with features
- "stem":          relu0(norm0(conv0(x))), [B, H/2, W/2, num_init_features]
- "denseblock1":   [B, H/4, W/4, c1]           (c1 = num_init_features + n1 * growth_rate; 256 for DN-201)
- "transition1":   [B, H/8, W/8, c1 // 2]      (norm, relu, 1x1 conv, 2x2 average pool)
- "denseblock2", "transition2" ([B, H/16, W/16, .]), "denseblock3", "transition3" ([B, H/32, W/32, .])
- "denseblock4":   [B, H/32, W/32, C]          (C = 1920 for DenseNet-201; CXRGazeLearn's reference-code cut)
- "norm5":         norm5(denseblock4), [B, H/32, W/32, C], before the final ReLU
"pooled" is the global average of relu(norm5), the classifier input.

`cut` stops the network after one of those features (CXRGazeLearn's encoder is "all layers before the last dense
block", `cut="transition3"`, [B, H/32, W/32, 896] for DenseNet-201): the later layers are not built, "features"
ends at the cut, "pooled" is the global average of the cut feature and there is no classifier. `cut=""` (default)
or "norm5" is the whole torchvision network.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gazejax.models.backbone_utils import (batch_norm, classifier_head, global_avg_pool,
                                           outputs, prepare_input, torch_conv)
from gazejax.models.layers import max_pool_window


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size * growth) - BN-ReLU-3x3 conv (growth); [B, H, W, C] -> [B, H, W, growth]."""

    growth_rate: int
    bn_size: int = 4
    drop_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        y = nn.relu(batch_norm(train, self.dtype, name="norm1")(x))
        y = torch_conv(self.bn_size * self.growth_rate, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv1")(y)
        y = nn.relu(batch_norm(train, self.dtype, name="norm2")(y))
        y = torch_conv(self.growth_rate, 3, dtype=self.dtype, conv_impl=self.conv_impl, name="conv2")(y)
        if self.drop_rate > 0:
            y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
        return y


class DenseBlock(nn.Module):
    """`num_layers` DenseLayers (`denselayer1`...), each fed the concatenation of all previous outputs."""

    num_layers: int
    growth_rate: int
    bn_size: int = 4
    drop_rate: float = 0.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for i in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, self.dtype, self.conv_impl,
                             name=f"denselayer{i + 1}")(x, train)
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to `features` channels, then 2x2 average pooling (stride 2)."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.relu(batch_norm(train, self.dtype, name="norm")(x))
        x = torch_conv(self.features, 1, dtype=self.dtype, conv_impl=self.conv_impl, name="conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


def cut_points(block_config: Sequence[int]) -> tuple[str, ...]:
    """The feature names a DenseNet with `block_config` can stop after, in network order."""
    names = ["stem"]
    for i in range(len(block_config)):
        names.append(f"denseblock{i + 1}")
        if i != len(block_config) - 1:
            names.append(f"transition{i + 1}")
    return tuple(names + ["norm5"])


class DenseNetFeatures(nn.Module):
    """torchvision's `features` Sequential; returns (last map, dict of intermediate maps).

    The last map is norm5's output, or the `cut` feature's (see the module docstring) when `cut` is set.
    """

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int
    drop_rate: float
    dtype: Any = jnp.float32
    cut: str = ""
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, dict]:
        if self.cut and self.cut not in cut_points(self.block_config):
            raise ValueError(f"densenet.py: cut {self.cut!r} is not a feature of this DenseNet; choose one of "
                             f"{', '.join(cut_points(self.block_config))}")
        feats: dict = {}

        def keep(name: str, value: jnp.ndarray) -> bool:  # stores a feature; True at the cut point
            feats[name] = value
            return name == self.cut

        x = torch_conv(self.num_init_features, 7, 2, dtype=self.dtype, conv_impl=self.conv_impl, name="conv0")(x)
        x = nn.relu(batch_norm(train, self.dtype, name="norm0")(x))
        if keep("stem", x):
            return x, feats
        x = max_pool_window(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        for i, num_layers in enumerate(self.block_config):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.drop_rate, self.dtype,
                           self.conv_impl, name=f"denseblock{i + 1}")(x, train)
            if keep(f"denseblock{i + 1}", x):
                return x, feats
            if i != len(self.block_config) - 1:
                x = Transition(x.shape[-1] // 2, self.dtype, self.conv_impl, name=f"transition{i + 1}")(x, train)
                if keep(f"transition{i + 1}", x):
                    return x, feats
        x = batch_norm(train, self.dtype, name="norm5")(x)
        keep("norm5", x)
        return x, feats


class DenseNet(nn.Module):
    """torchvision-compatible DenseNet-BC; see the module docstring for inputs and outputs.

    Attributes:
      growth_rate, block_config, num_init_features, bn_size, drop_rate: torchvision's DenseNet arguments
        (32, (6, 12, 48, 32), 64, 4, 0 for DenseNet-201); small values give tiny test nets.
      num_classes: classes of the `classifier` head; 0 = no head (logits None).
      in_channels / stem_mode: see backbone_utils.prepare_input.
      dtype: computation dtype (parameters stay float32).
      cut: stop after this feature (module docstring); "" or "norm5" = the whole network.
      conv_impl: convolution formulation (`gazejax.models.conv_impl.IMPLS`); parameters are the same whichever.
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 48, 32)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    num_classes: int = 1000
    in_channels: int = 3
    stem_mode: str = "repeat"
    dtype: Any = jnp.float32
    cut: str = ""
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict:
        partial = self.cut not in ("", "norm5")
        if partial and self.num_classes > 0:
            raise ValueError(f"densenet.py: a DenseNet cut at {self.cut!r} has no classifier; pass num_classes=0")
        x = prepare_input(x, self.in_channels, self.stem_mode, self.dtype)
        x, feats = DenseNetFeatures(self.growth_rate, tuple(self.block_config), self.num_init_features,
                                    self.bn_size, self.drop_rate, self.dtype, cut=self.cut,
                                    conv_impl=self.conv_impl, name="features")(x, train)
        pooled = global_avg_pool(x if partial else nn.relu(x))
        logits = classifier_head(pooled, self.num_classes, "classifier", self.dtype)
        return outputs(logits, feats, pooled)


def densenet201(**kwargs) -> DenseNet:
    """DenseNet-201: growth 32, blocks (6, 12, 48, 32); 20,013,928 parameters with num_classes=1000."""
    kwargs.setdefault("growth_rate", 32)
    kwargs.setdefault("block_config", (6, 12, 48, 32))
    kwargs.setdefault("num_init_features", 64)
    return DenseNet(**kwargs)
