"""MobileNetV2 (Sandler et al. 2018), torchvision layout, Flax Linen, NHWC.

Parameter names mirror torchvision's module paths, with each InvertedResidual's inner `conv` Sequential
flattened (torch `features.2.conv.1.0` = flax `features/2/1/0`) and the head named `classifier` (torch
`classifier.1`); `from_torch` undoes both. `mobilenet_v2(num_classes=1000)` has exactly torchvision's 3,504,872
parameters.

`__call__(x [B, H, W, in_channels], train=False)` returns
`{"logits": [B, num_classes] or None, "features": {...}, "pooled": [B, C]}` with features
- "stride2", "stride4", "stride8", "stride16", "stride32": the output of the last block at that stride,
  [B, H/s, W/s, C_s] (16, 24, 32, 96, 320 channels at width_mult 1)
- "final_conv": the 1x1 conv-BN-ReLU6 before pooling, [B, H/32, W/32, 1280]
"pooled" is the global average of "final_conv"; the classifier applies dropout 0.2 when training ("dropout"
RNG stream). `refine` (optional, `[B, H/32, W/32, C_32] -> same shape`) is applied between "stride32" (kept
unrefined) and the final 1x1 conv, as in `efficientnet` (where a method inserts a block, e.g. the 2D AAB).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gazejax.models.backbone_utils import (ConvNormAct, batch_norm, classifier_head, global_avg_pool,
                                           make_divisible, outputs, prepare_input, relu6, torch_conv)
from gazejax.models.efficientnet import apply_refine

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's / the paper's Table 2.
V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6] -> 3x3 depthwise-BN-ReLU6 -> 1x1 linear projection + BN, residual when shapes match.

    [B, H, W, C_in] -> [B, H/stride, W/stride, out]; children numbered like torchvision's `conv` Sequential.
    """

    out: int
    stride: int
    expand_ratio: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        c_in = x.shape[-1]
        hidden = int(round(c_in * self.expand_ratio))
        y, idx, ci = x, 0, self.conv_impl
        if self.expand_ratio != 1:
            y = ConvNormAct(hidden, 1, activation=relu6, dtype=self.dtype, conv_impl=ci, name="0")(y, train)
            idx = 1
        y = ConvNormAct(hidden, 3, self.stride, hidden, relu6, dtype=self.dtype, conv_impl=ci, name=str(idx))(y, train)
        y = torch_conv(self.out, 1, dtype=self.dtype, conv_impl=ci, name=str(idx + 1))(y)
        y = batch_norm(train, self.dtype, name=str(idx + 2))(y)
        return x + y if (self.stride == 1 and c_in == self.out) else y


class MobileNetV2Features(nn.Module):
    """torchvision's `features`: stem "0", blocks "1".."17", final 1x1 conv "18"; returns (x, feature dict)."""

    setting: Sequence[tuple]
    width_mult: float
    round_nearest: int
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, refine: Callable | None = None
                 ) -> tuple[jnp.ndarray, dict]:
        first = make_divisible(32 * self.width_mult, self.round_nearest)
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        ci = self.conv_impl
        x = ConvNormAct(first, 3, 2, activation=relu6, dtype=self.dtype, conv_impl=ci, name="0")(x, train)
        stride, idx, feats = 2, 1, {"stride2": x}
        for t, c, n, s in self.setting:
            out = make_divisible(c * self.width_mult, self.round_nearest)
            for i in range(n):
                block_stride = s if i == 0 else 1
                x = InvertedResidual(out, block_stride, t, self.dtype, ci, name=str(idx))(x, train)
                stride, idx = stride * block_stride, idx + 1
                feats[f"stride{stride}"] = x
        if refine is not None:
            x = apply_refine(refine, x, "mobilenet.py")
        x = ConvNormAct(last, 1, activation=relu6, dtype=self.dtype, conv_impl=ci, name=str(idx))(x, train)
        feats["final_conv"] = x
        return x, feats


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2; see the module docstring for inputs and outputs.

    Attributes:
      width_mult: channel multiplier (torchvision's), rounded to multiples of `round_nearest`.
      setting: inverted-residual table (t, c, n, s); a shorter table gives tiny test nets.
      dropout: classifier dropout (0.2).
      num_classes: classes of the `classifier` head; 0 = no head (logits None).
      in_channels / stem_mode: see backbone_utils.prepare_input.
      dtype: computation dtype (parameters stay float32).
      conv_impl: convolution formulation (`gazejax.models.conv_impl.IMPLS`); parameters are the same whichever.
    """

    width_mult: float = 1.0
    setting: Sequence[tuple] = V2_SETTING
    round_nearest: int = 8
    dropout: float = 0.2
    num_classes: int = 1000
    in_channels: int = 3
    stem_mode: str = "repeat"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, refine: Callable | None = None) -> dict:
        x = prepare_input(x, self.in_channels, self.stem_mode, self.dtype)
        x, feats = MobileNetV2Features(tuple(self.setting), self.width_mult, self.round_nearest, self.dtype,
                                       self.conv_impl, name="features")(x, train, refine)
        pooled = global_avg_pool(x)
        logits = classifier_head(pooled, self.num_classes, "classifier", self.dtype, self.dropout, train)
        return outputs(logits, feats, pooled)


def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNetV2; 3,504,872 parameters with num_classes=1000 and width_mult=1."""
    return MobileNetV2(**kwargs)
