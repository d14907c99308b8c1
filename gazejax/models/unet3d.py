"""EquiUnet (Henry et al., "Top 10 BraTS 2020", open_brats2020): the 3D U-Net backbone of SAN+AAB, split into an
encoder and a decoder so that a composite model can refine the deepest encoder feature E4 in between.

Channels-last `[B, D, H, W, C]` (the same code runs on `[B, H, W, C]`). Sub-module names mirror open_brats2020's
state-dict keys (`encoder1..4`, `bottom`, `bottom_2`, `decoder3..1`, `outconv`, `deep_bottom`, `deep_bottom2`,
`deep3`, `deep2`) so that `convert.from_torch` maps keys by renaming only.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.layers import ConvNormAct, UBlock, constrain_spatial, conv1x1, max_pool, upsample_linear

Dtype = Any
DOWNSAMPLING = 8  # three max-pools of 2 between encoder levels


def ublock(remat: bool) -> type[nn.Module]:
    """UBlock, or UBlock under `nn.remat` (its activations recomputed in the backward pass instead of stored)."""
    return nn.remat(UBlock) if remat else UBlock


def check_spatial(x: jax.Array, multiple: int, where: str) -> None:
    """Raises a one-line ValueError unless `x` is `[B, *S, C]` with 2 or 3 spatial axes divisible by `multiple`."""
    if x.ndim not in (4, 5):
        raise ValueError(f"{where}: expected [B, D, H, W, C] or [B, H, W, C] input, got shape {x.shape}")
    bad = [s for s in x.shape[1:-1] if s % multiple]
    if bad:
        raise ValueError(f"{where}: spatial size {x.shape[1:-1]} must be divisible by {multiple}")


class EquiUnetEncoder(nn.Module):
    """Encoder `[B, *S, C_in] -> (e1, e2, e3, e4)` with widths w*2**i at resolutions 1, 1/2, 1/4, 1/8.

    e4 is the `encoder4` block output (8w channels at 1/8 resolution), the E4 that AAB refines.
    """

    width: int = 48
    dtype: Dtype = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        del train  # no dropout / batch statistics (GroupNorm, p=0 as in open_brats2020)
        check_spatial(x, DOWNSAMPLING, "unet3d.py EquiUnetEncoder")
        features = []
        for level in range(4):
            if level:
                x = max_pool(x, 2)
            w = self.width * 2**level
            x = ublock(self.remat)(w, w, dtype=self.dtype, conv_impl=self.conv_impl, name=f"encoder{level + 1}")(x)
            features.append(x)
        batch, spatial = x.shape[0], x.shape[1:-1]
        chex.assert_shape(features[-1], (batch, *spatial, 8 * self.width))
        return tuple(features)


class DecoderOutput(NamedTuple):
    """EquiUnetDecoder result: `seg` logits `[B, *S, K]`, `deep` full-resolution deep-supervision logits (empty
    when off; order bottom, bottom_2, decoder3, decoder2 as open_brats2020) and `last`, the decoder1 feature
    `[B, *S, w]` that extra full-resolution heads (e.g. +gaze*) read."""

    seg: jax.Array
    deep: list[jax.Array]
    last: jax.Array


class EquiUnetDecoder(nn.Module):
    """Bottom (dilation 2) + bottom_2 + three up-sampling levels: `(e1, e2, e3, e4) -> DecoderOutput`.

    bottom_2 = conv-norm-ReLU on concat(e4, bottom) (16w -> 4w); each level concatenates [skip, up(x)] (skip first,
    as torch.cat([down, up])) and up-samples with align-corners trilinear x2. `outconv` is a 1x1 conv with bias.
    """

    num_classes: int = 3
    width: int = 48
    deep_supervision: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, features: tuple[jax.Array, ...], train: bool = False) -> DecoderOutput:
        del train
        e1, e2, e3, e4 = features
        w, UBlock, ci = self.width, ublock(self.remat), self.conv_impl  # noqa: N806 (a module class)
        chex.assert_rank([e1, e2, e3, e4], e1.ndim)
        chex.assert_axis_dimension(e4, -1, 8 * w)
        bottom = UBlock(8 * w, 8 * w, dilation=2, dtype=self.dtype, conv_impl=ci, name="bottom")(e4)
        bottom_2 = ConvNormAct(4 * w, dtype=self.dtype, conv_impl=ci, name="bottom_2")(
            jnp.concatenate([e4, bottom], -1))
        d3 = UBlock(4 * w, 2 * w, dtype=self.dtype, conv_impl=ci, name="decoder3")(self._skip(e3, bottom_2))
        d2 = UBlock(2 * w, w, dtype=self.dtype, conv_impl=ci, name="decoder2")(self._skip(e2, d3))
        d1 = UBlock(w, w, dtype=self.dtype, conv_impl=ci, name="decoder1")(self._skip(e1, d2))
        seg = conv1x1(d1, self.num_classes, self.dtype, name="outconv", conv_impl=ci).astype(jnp.float32)
        seg = constrain_spatial(seg)
        chex.assert_shape(seg, (*e1.shape[:-1], self.num_classes))
        deep = []
        if self.deep_supervision:
            heads = {"deep_bottom": (bottom, 8), "deep_bottom2": (bottom_2, 8), "deep3": (d3, 4), "deep2": (d2, 2)}
            for name, (feature, factor) in heads.items():
                logits = conv1x1(feature, self.num_classes, self.dtype, name=name, conv_impl=ci)
                deep.append(upsample_linear(logits, factor, ci).astype(jnp.float32))
            chex.assert_equal_shape([seg, *deep])
        return DecoderOutput(seg, deep, d1)

    def _skip(self, skip: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.concatenate([skip, upsample_linear(x, 2, self.conv_impl).astype(skip.dtype)], axis=-1)


class EquiUnet(nn.Module):
    """EquiUnet `[B, D, H, W, in_channels] -> {"seg": [B, D, H, W, num_classes], "deep": [...]}` (logits, float32).

    Widths w*2**i (w=48: 48/96/192/384); spatial size must be divisible by 8. Parameters:
    {"encoder": {encoder1..4}, "decoder": {bottom, bottom_2, decoder3..1, outconv, deep_*}}.
    """

    num_classes: int = 3
    width: int = 48
    in_channels: int = 4
    deep_supervision: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        check_spatial(x, DOWNSAMPLING, "unet3d.py EquiUnet")
        chex.assert_axis_dimension(x, -1, self.in_channels)
        features = EquiUnetEncoder(self.width, self.dtype, self.remat, self.conv_impl, name="encoder")(x, train)
        out = EquiUnetDecoder(
            self.num_classes, self.width, self.deep_supervision, self.dtype, self.remat, self.conv_impl, name="decoder"
        )(features, train)
        return {"seg": out.seg, "deep": out.deep}
