"""Pieces shared by the torchvision-compatible 2D backbones: input/stem handling, torch-semantics BatchNorm,
Conv2dNormActivation, the classifier head and the common output dictionary.

Every backbone returns `{"logits": [B, num_classes] or None, "features": {name: [B, h, w, C]}, "pooled": [B, C]}`;
the feature names are listed in each backbone's module docstring.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from gazejax.models.conv_impl import conv_general_dilated_for

STEM_MODES = ("repeat", "adapt")

# torch BatchNorm: running = (1 - 0.1) * running + 0.1 * batch, i.e. flax momentum 0.9.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPS = 1e-5


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of `divisor`, never more than 10% down (torchvision's helper)."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def check_stem_args(in_channels: int, stem_mode: str) -> None:
    """Validates the common `in_channels` / `stem_mode` constructor arguments."""
    if stem_mode not in STEM_MODES:
        raise ValueError(f"stem_mode must be one of {STEM_MODES}, got {stem_mode!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")


def prepare_input(x: jnp.ndarray, in_channels: int, stem_mode: str, dtype: Any) -> jnp.ndarray:
    """Checks an NHWC image batch [B, H, W, in_channels] and adapts it to the stem.

    With one input channel and `stem_mode="repeat"` the grey channel is tiled to three, so the stem keeps
    torchvision's 3-channel kernel (and ImageNet weights apply unchanged); with `"adapt"` the stem is built for
    `in_channels` inputs (`from_torch` then folds the RGB kernel over its input channels).
    """
    check_stem_args(in_channels, stem_mode)
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(f"expected input [B, H, W, {in_channels}] (NHWC), got shape {tuple(x.shape)}")
    if in_channels == 1 and stem_mode == "repeat":
        x = jnp.tile(x, (1, 1, 1, 3))
    return x.astype(dtype)


def batch_norm(train: bool, dtype: Any, eps: float = TORCH_BN_EPS, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with torch's defaults (momentum 0.1 => flax 0.9, eps 1e-5); batch statistics when training.

    Under `jax.jit` with a batch sharded over devices the batch mean/variance are global (synchronised BN).
    Flax keeps the biased batch variance in `var`; torch keeps the unbiased one (a factor n/(n-1)).
    """
    return nn.BatchNorm(use_running_average=not train, momentum=TORCH_BN_MOMENTUM, epsilon=eps, dtype=dtype,
                        name=name)


def torch_conv(features: int, kernel: int, stride: int = 1, groups: int = 1, use_bias: bool = False,
               dtype: Any = jnp.float32, name: str | None = None, padding: int | None = None,
               conv_impl: str = "auto") -> nn.Conv:
    """Conv2d with torch's symmetric padding ((k - 1) // 2 unless given) and He-normal (fan_out) init, computed
    as `conv_impl` (`gazejax.models.conv_impl.IMPLS`; the parameters are the same whichever)."""
    pad = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=use_bias, dtype=dtype,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                   conv_general_dilated=conv_general_dilated_for(conv_impl), name=name)


class ConvNormAct(nn.Module):
    """torchvision `Conv2dNormActivation`: conv (child "0", no bias) -> BatchNorm (child "1") -> activation.

    [B, H, W, C_in] -> [B, H/stride, W/stride, features]; `activation=None` leaves the output linear.
    """

    features: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    activation: Callable | None = nn.relu
    eps: float = TORCH_BN_EPS
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = torch_conv(self.features, self.kernel, self.stride, self.groups, dtype=self.dtype, name="0",
                       conv_impl=self.conv_impl)(x)
        x = batch_norm(train, self.dtype, self.eps, name="1")(x)
        return x if self.activation is None else self.activation(x)


def relu6(x: jnp.ndarray) -> jnp.ndarray:
    """min(max(x, 0), 6), MobileNetV2's activation."""
    return jnp.clip(x, 0.0, 6.0)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, C] -> [B, C], computed in float32 for a stable mean in low precision."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def classifier_head(pooled: jnp.ndarray, num_classes: int, name: str, dtype: Any = jnp.float32,
                    dropout: float = 0.0, train: bool = False) -> jnp.ndarray | None:
    """Dropout (training only) + Linear `name` on [B, C] -> [B, num_classes]; None when `num_classes == 0`.

    Call it from inside a compact `__call__`: the Dense is created in (and named under) the calling module.
    Dropout draws from the "dropout" RNG stream.
    """
    if num_classes <= 0:
        return None
    if dropout > 0:
        pooled = nn.Dropout(dropout, deterministic=not train)(pooled)
    return nn.Dense(num_classes, dtype=dtype, name=name)(pooled)


def outputs(logits: jnp.ndarray | None, features: dict[str, jnp.ndarray], pooled: jnp.ndarray) -> dict:
    """The common backbone output dictionary (see module docstring); logits are float32 for stable losses."""
    return {"logits": None if logits is None else logits.astype(jnp.float32), "features": features,
            "pooled": pooled}
