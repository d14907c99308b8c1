"""Spatial attention modules that replace SAN+AAB in Table 3 of Huang et al. (BMVC 2021) with their attention maps
supervised by the gaze map: CBAM (Woo et al., ECCV 2018) placed as open_brats2020's Att_EquiUnet, and a compact 3D
adaptation of TASN's trilinear attention (Zheng et al., CVPR 2019) with a structure and a detailed attention map.

Channels-last `[B, *S, C]` (N-d). Every map is returned as logits `[B, *S, 1]` (the module applies the sigmoid
itself), so `losses.gaze_bce` can supervise it once pooled to the gaze grid.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.layers import ConvNormAct, UBlock, conv, conv1x1, group_norm, max_pool, spatial_rank
from gazejax.models.nnunet3d import deep_heads
from gazejax.models.unet3d import DOWNSAMPLING, DecoderOutput, EquiUnetDecoder, check_spatial

Dtype = Any
REDUCTION = 16  # CBAM's channel-MLP reduction ratio r


class ChannelAttention(nn.Module):
    """CBAM channel gate `[B, *S, C] -> [B, *S, C]`: x * sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x))).

    The shared MLP is Dense(C -> max(1, C // reduction)) -> ReLU -> Dense(C) with biases (`fc1`, `fc2`), as the
    reference's two nn.Linear; the pools are global over the spatial axes.
    """

    reduction: int = REDUCTION
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, axes = x.shape[-1], tuple(range(1, x.ndim - 1))
        fc1 = nn.Dense(max(1, c // self.reduction), dtype=self.dtype, param_dtype=jnp.float32, name="fc1")
        fc2 = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")

        def mlp(v: jax.Array) -> jax.Array:
            return fc2(nn.relu(fc1(v)))

        weights = jax.nn.sigmoid(mlp(jnp.mean(x, axes)) + mlp(jnp.max(x, axes)))  # Eq. 2, Woo et al.
        return x * weights.reshape(x.shape[0], *(1,) * len(axes), c).astype(x.dtype)


class SpatialAttention(nn.Module):
    """CBAM spatial gate `[B, *S, C] -> (x * sigmoid(logits), logits [B, *S, 1])`.

    logits = GroupNorm_1(conv_k([mean_c(x), max_c(x)])), a bias-free k^n conv (k = 7) on the channel-pooled
    map; the one-group norm stands for the reference's norm_layer(1) (BatchNorm in Woo et al.). open_brats2020
    also applies a ReLU before the sigmoid, which keeps every weight >= 0.5 and makes a gaze target below 0.5
    unreachable; CBAM's paper has none, so it is off by default (`relu=True` restores the reference).
    """

    kernel_size: int = 7
    relu: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pooled = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
        logits = conv(1, spatial_rank(x), 2, self.kernel_size, dtype=self.dtype, name="conv",
                      conv_impl=self.conv_impl)(pooled)
        logits = group_norm(1, self.dtype, name="bn")(logits)
        if self.relu:
            logits = nn.relu(logits)
        logits = logits.astype(jnp.float32)
        return x * jax.nn.sigmoid(logits).astype(x.dtype), logits  # Eq. 3, Woo et al.


class CBAM(nn.Module):
    """CBAM `[B, *S, C] -> (refined [B, *S, C], spatial logits [B, *S, 1])`: channel then spatial gate (Eq. 1)."""

    reduction: int = REDUCTION
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # of the spatial gate's conv

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = ChannelAttention(self.reduction, self.dtype, name="ChannelGate")(x)
        return SpatialAttention(dtype=self.dtype, conv_impl=self.conv_impl, name="SpatialGate")(x)


class CBAMEquiUnetEncoder(nn.Module):
    """Att_EquiUnet encoder: CBAM `cbam{i}` after every `encoder{i}` block, before the next max-pool.

    `[B, *S, C_in] -> ((e1, e2, e3, e4), (logits1, .., logits4))`, the spatial logits at 1, 1/2, 1/4, 1/8.
    The blocks keep EquiUnet's names and widths so an EquiUnet checkpoint maps in (open_brats2020 nests them one
    level deeper, `encoder{i}.UBlock` / `encoder{i}.CBAM`).
    """

    width: int = 48
    reduction: int = REDUCTION
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        del train
        check_spatial(x, DOWNSAMPLING, "attention3d.py CBAMEquiUnetEncoder")
        features, maps = [], []
        for level in range(4):
            x = max_pool(x, 2) if level else x
            w = self.width * 2**level
            x, logits = CBAM(self.reduction, self.dtype, self.conv_impl, name=f"cbam{level + 1}")(
                UBlock(w, w, dtype=self.dtype, conv_impl=self.conv_impl, name=f"encoder{level + 1}")(x))
            features.append(x)
            maps.append(logits)
        return tuple(features), tuple(maps)


class CBAMEquiUnetDecoder(EquiUnetDecoder):
    """Att_EquiUnet decoder: EquiUnetDecoder with CBAM after `bottom` (`cbam_bottom`) and after `bottom_2`
    (`cbam_bottom_2`), as open_brats2020 (whose deep heads also read the CBAM outputs); the up-sampling levels
    and heads keep EquiUnet's names. They restate EquiUnetDecoder's level code because that module has no hook
    between `bottom_2` and `decoder3`.
    """

    reduction: int = REDUCTION

    @nn.compact
    def __call__(self, features: tuple[jax.Array, ...], train: bool = False) -> DecoderOutput:
        del train
        e1, e2, e3, e4 = features
        w, dt, ci = self.width, self.dtype, self.conv_impl  # conv_impl: EquiUnetDecoder's attribute
        bottom, _ = CBAM(self.reduction, dt, ci, name="cbam_bottom")(
            UBlock(8 * w, 8 * w, 2, dt, ci, name="bottom")(e4))
        bottom_2 = ConvNormAct(4 * w, dtype=dt, conv_impl=ci, name="bottom_2")(jnp.concatenate([e4, bottom], -1))
        bottom_2, _ = CBAM(self.reduction, dt, ci, name="cbam_bottom_2")(bottom_2)
        d3 = UBlock(4 * w, 2 * w, dtype=dt, conv_impl=ci, name="decoder3")(self._skip(e3, bottom_2))
        d2 = UBlock(2 * w, w, dtype=dt, conv_impl=ci, name="decoder2")(self._skip(e2, d3))
        d1 = UBlock(w, w, dtype=dt, conv_impl=ci, name="decoder1")(self._skip(e1, d2))
        seg = conv1x1(d1, self.num_classes, dt, name="outconv", conv_impl=ci).astype(jnp.float32)
        deep = []
        if self.deep_supervision:
            heads = {"deep_bottom": (bottom, 8), "deep_bottom2": (bottom_2, 8), "deep3": (d3, 4), "deep2": (d2, 2)}
            deep = deep_heads(heads, self.num_classes, dt, ci)
        return DecoderOutput(seg, deep, d1)


def trilinear_attention(x: jax.Array) -> jax.Array:
    """Normalised trilinear attention maps `[B, *S, C] -> [B, *S, C]` (float32), one map per channel.

    With X the `[C, N]` matrix of x (N = prod(S)): M(X) = N(N(X) X^T) X (Zheng et al. 2019), where the inner N is
    a softmax over positions for each channel (spatial normalisation) and the outer N a softmax over the second
    axis of the C x C channel-relation matrix (relation normalisation). Map i is a convex combination of
    the channels related to channel i; their mean is TASN's structure attention.
    """
    b, c = x.shape[0], x.shape[-1]
    tokens = x.reshape(b, -1, c).astype(jnp.float32)  # X^T, [B, N, C]
    spatial = jax.nn.softmax(tokens, axis=1)  # N(X), per channel over positions
    relation = jax.nn.softmax(jnp.einsum("bni,bnj->bij", spatial, tokens), axis=-1)  # N(N(X) X^T), [B, C, C]
    maps = jnp.einsum("bij,bnj->bni", relation, tokens)  # (N(...) X)^T, [B, N, C]
    return maps.reshape(*x.shape[:-1], c)


class TrilinearAttention(nn.Module):
    """TASN-style attention on a backbone feature: `x [B, *S, C] -> (x', structure logits, detail logits)`,
    both logits `[B, *S, 1]`; a compact 3D adaptation of Zheng et al. (2019).

    TASN turns its trilinear maps M (`trilinear_attention`) into a structure attention (the mean of all maps) and
    a detailed attention (one randomly chosen map while training) and uses them to re-sample the *image* for a
    master and a part network. A 3D segmentation network has no cheap analogue of that warp, so here the two
    maps gate the *feature* instead, keeping TASN's map definitions:
      s = mean_c M,  d = M_k (k uniform per sample when training with a "dropout" rng, else the channel whose map
      peaks highest, so evaluation is deterministic),
      logits_a = GroupNorm_1(a) (per-sample spatial standardisation + learnable scale/bias, as CBAM's gate),
      x' = x + Conv1x1([x * sigmoid(logits_s), x * sigmoid(logits_d)]) -> C   (`fuse`, with bias).
    The residual keeps the backbone's feature where attention is low; both logits are gaze-supervised.
    """

    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # of `fuse` (conv_impl.IMPLS)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        maps = trilinear_attention(x)
        structure = jnp.mean(maps, -1, keepdims=True)
        detail = jnp.take_along_axis(maps, self._detail_index(maps, train), axis=-1)
        logits_s = group_norm(1, self.dtype, name="structure_norm")(structure).astype(jnp.float32)
        logits_d = group_norm(1, self.dtype, name="detail_norm")(detail).astype(jnp.float32)
        gated = [x * jax.nn.sigmoid(lg).astype(x.dtype) for lg in (logits_s, logits_d)]
        refined = x + conv1x1(jnp.concatenate(gated, -1), x.shape[-1], self.dtype, name="fuse",
                                 conv_impl=self.conv_impl).astype(x.dtype)
        return refined, logits_s, logits_d

    def _detail_index(self, maps: jax.Array, train: bool) -> jax.Array:
        """`[B, 1, .., 1]` channel index of the detailed attention map, broadcastable against `maps`."""
        shape = (maps.shape[0],) + (1,) * (maps.ndim - 1)
        if train and self.has_rng("dropout"):
            return jax.random.randint(self.make_rng("dropout"), shape, 0, maps.shape[-1])
        peaks = jnp.max(maps.reshape(maps.shape[0], -1, maps.shape[-1]), axis=1)
        return jnp.argmax(peaks, axis=-1).reshape(shape)
