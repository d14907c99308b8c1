"""nnU-Net-style 3D U-Net (Isensee et al., Nature Methods 2021, as configured for BraTS by Isensee et al. 2021), a
Table 3 backbone of Huang et al. (BMVC 2021), split into encoder and decoder so that SAN+AAB can refine its E4.

Channels-last `[B, D, H, W, C]` (the same code runs on `[B, H, W, C]`). Each stage is two conv3 (bias) ->
InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01); stages after the first down-sample with a stride-2 first conv;
widths base * 2**s capped at 320; transposed-conv (kernel = stride = 2) up-sampling, concat [up, skip] (nnU-Net's
order), 1x1 conv head. Init as nnU-Net's `InitWeights_He(1e-2)`: kaiming-normal with a = 0.01, biases 0.

**E4 convention.** The encoder returns stages 0-3 (1, 1/2, 1/4, 1/8); "E4" is stage 3 (the 4th, 8 * base
channels at 1/8), the deepest skip feature. Stages 4.. (the 1/16 bottleneck and, with `num_stages` > 5, deeper
ones) belong to the decoder and are computed from the refined E4'. This matches EquiUnet, whose E4 (encoder4, 1/8)
feeds both the deeper `bottom` path and the skip-like `bottom_2` concat, and the paper's AAB geometry: E4 is 2x the
SAN grid (1/16), so AAB max-pools it by 2 (16^3 -> 8^3 for a 128^3 crop). Refining the 1/16 bottleneck instead
would leave the 1/8 skip connection unrefined.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models import conv_impl as conv_impl_lib
from gazejax.models.conv_impl import conv_general_dilated_for
from gazejax.models.layers import constrain_spatial, conv1x1, spatial_rank, upsample_linear
from gazejax.models.unet3d import DecoderOutput, check_spatial

Dtype = Any
E4_STAGE = 3  # 0-based index of the encoder stage whose output is E4 (1/8 resolution)
MAX_WIDTH = 320  # nnU-Net's cap on 3D feature maps
LEAKY_SLOPE = 1e-2

# InitWeights_He(1e-2): torch kaiming_normal_(a=0.01), N(0, 2 / (1 + a^2) / fan_in), biases zero.
_HE_GAIN = 2.0 / (1.0 + LEAKY_SLOPE**2)
he_normal = nn.initializers.variance_scaling(_HE_GAIN, "fan_in", "normal")
# torch takes a ConvTranspose weight's fan_in from its dim 1 (= out_channels): Flax's fan_out of the same kernel.
he_normal_transposed = nn.initializers.variance_scaling(_HE_GAIN, "fan_out", "normal")


def stage_widths(base_width: int, num_stages: int, max_width: int = MAX_WIDTH) -> tuple[int, ...]:
    """Widths of nnU-Net's resolution stages: base * 2**s capped at `max_width` (32 -> 32/64/128/256/320)."""
    return tuple(min(base_width * 2**s, max_width) for s in range(num_stages))


def downsampling(num_stages: int) -> int:
    """Total down-sampling of a `num_stages` network (the input's spatial sizes must be divisible by it)."""
    return 2 ** (num_stages - 1)


def deep_heads(
    features: dict[str, tuple[jax.Array, int]], num_classes: int, dtype: Dtype = jnp.float32,
    conv_impl: str = "auto",
) -> list[jax.Array]:
    """Deep-supervision heads: per `name: (feature, factor)`, a 1x1 conv (bias) to `num_classes` logits,
    up-sampled (align-corners linear) by `factor` to full resolution, float32; call inside a compact method.

    Full-resolution logits let every backbone's deep outputs use the same loss as EquiUnet's (open_brats2020);
    nnU-Net itself down-samples the target instead.
    """
    return [
        upsample_linear(conv1x1(feature, num_classes, dtype, name=name, conv_impl=conv_impl), factor, conv_impl)
        .astype(jnp.float32)
        for name, (feature, factor) in features.items()
    ]


class BlockConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (k,) * n, strides=k, padding="VALID")` (its parameters, initialisers and values)
    computed as one `[..., C_in] x [C_in, k^n C_out]` matmul and a depth-to-space reshape: with kernel = stride each
    input voxel paints its own k^n output block, output voxel k*i + r = x[i] . kernel[k - 1 - r] + bias (lax's
    transposed convolution does not flip the kernel). XLA:CPU runs the input-dilated native convolution far below
    its matmul rate (`_conv` keeps it where the conv_impl resolves to "xla")."""

    features: int
    kernel: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, k = x.ndim - 2, self.kernel
        kernel = self.param("kernel", he_normal_transposed, (k,) * n + (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        w = jnp.flip(kernel, tuple(range(n)))  # tap r of the output block is kernel[k - 1 - r]
        w = jnp.moveaxis(w, n, 0).reshape(x.shape[-1], -1)  # [C_in, (r_1, ..., r_n, C_out)]
        y = (x @ w).reshape(*x.shape[:-1], *(k,) * n, self.features)  # [B, *S, *(k,) * n, C_out]
        order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]  # interleave S_i, r_i
        y = y.transpose(order).reshape(x.shape[0], *(s * k for s in x.shape[1:-1]), self.features)
        return y + bias


def _conv(features: int, n: int, kernel: int, stride: int, dtype: Dtype, name: str, transposed: bool = False,
          conv_impl: str = "auto"):
    common = dict(strides=(stride,) * n, use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                  bias_init=nn.initializers.zeros, name=name)
    if transposed:  # kernel == stride: each input voxel paints its own k^n output block
        if kernel != stride:
            raise ValueError(f"nnunet3d.py: transposed conv with kernel {kernel} != stride {stride}")
        if conv_impl_lib.resolve(conv_impl) != "xla":  # a matmul (the same parameters and values)
            return BlockConvTranspose(features, kernel, dtype, name=name)
        return nn.ConvTranspose(features, (kernel,) * n, padding="VALID", kernel_init=he_normal_transposed, **common)
    return nn.Conv(features, (kernel,) * n, padding=[(kernel // 2,) * 2] * n, kernel_init=he_normal,
                   conv_general_dilated=conv_general_dilated_for(conv_impl), **common)


class ConvNormLReLU(nn.Module):
    """conv3 (bias, stride `stride`) -> InstanceNorm (affine) -> LeakyReLU(0.01), `[B, *S, C] -> [B, *S/stride, F]`."""

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(self.features, spatial_rank(x), 3, self.stride, self.dtype, "conv", conv_impl=self.conv_impl)(x)
        # eps 1e-5 and two-pass variance: torch InstanceNorm3d(affine=True) semantics
        x = nn.InstanceNorm(1e-5, dtype=self.dtype, param_dtype=jnp.float32, use_fast_variance=False, name="norm")(x)
        return nn.leaky_relu(x, LEAKY_SLOPE)


class NNUNetStage(nn.Module):
    """Two ConvNormLReLU (`convs_0` with stride `first_stride`, `convs_1`), nnU-Net's StackedConvBlocks."""

    features: int
    first_stride: int = 1
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ConvNormLReLU(self.features, self.first_stride, self.dtype, self.conv_impl, name="convs_0")(
            constrain_spatial(x))
        return constrain_spatial(ConvNormLReLU(self.features, 1, self.dtype, self.conv_impl, name="convs_1")(x))


class NNUNetEncoder(nn.Module):
    """Stages 0..3: `[B, *S, C_in] -> (s0, s1, s2, e4)` at 1, 1/2, 1/4, 1/8 with widths base * 2**s (capped)."""

    width: int = 32
    max_width: int = MAX_WIDTH
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        del train  # InstanceNorm, no dropout: train and eval are the same function
        check_spatial(x, 2**E4_STAGE, "nnunet3d.py NNUNetEncoder")
        features = []
        for s, w in enumerate(stage_widths(self.width, E4_STAGE + 1, self.max_width)):
            x = NNUNetStage(w, 1 if s == 0 else 2, self.dtype, self.conv_impl, name=f"stage{s}")(x)
            features.append(x)
        return tuple(features)


class NNUNetDecoder(nn.Module):
    """Stages 4..num_stages-1 from E4, then transposed-conv up-sampling back to full resolution:
    `(s0, s1, s2, e4) -> DecoderOutput`.

    Level i (coarsest first) up-samples with `transp{i}` to the matching skip's width, concatenates [up, skip] and
    applies `up_stage{i}`; `seg` is the 1x1 head. Deep supervision (optional) adds heads `deep{i}` on the decoder
    levels between the coarsest and the full-resolution one, coarse to fine (nnU-Net computes the coarsest output
    but weights it 0), up-sampled to full resolution. `last` is the full-resolution decoder feature.
    """

    num_classes: int = 3
    width: int = 32
    max_width: int = MAX_WIDTH
    num_stages: int = 5
    deep_supervision: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS (transposed convs: BlockConvTranspose unless it resolves to xla)

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> DecoderOutput:
        del train
        if len(features) != E4_STAGE + 1 or self.num_stages <= E4_STAGE + 1:
            raise ValueError(f"nnunet3d.py: expected {E4_STAGE + 1} encoder features and num_stages > "
                             f"{E4_STAGE + 1}, got {len(features)} and {self.num_stages}")
        widths = stage_widths(self.width, self.num_stages, self.max_width)
        n, ci = spatial_rank(features[0]), self.conv_impl
        skips, x = list(features), features[-1]
        for s in range(E4_STAGE + 1, self.num_stages):  # the 1/16 bottleneck (and deeper stages)
            x = NNUNetStage(widths[s], 2, self.dtype, ci, name=f"stage{s}")(x)
            skips.append(x)
        skips.pop()  # the deepest stage is the decoder's input, not a skip
        levels = []
        for i, s in enumerate(reversed(range(len(skips)))):
            up = _conv(widths[s], n, 2, 2, self.dtype, f"transp{i}", transposed=True, conv_impl=ci)(x)
            x = NNUNetStage(widths[s], 1, self.dtype, ci, name=f"up_stage{i}")(jnp.concatenate([up, skips[s]], -1))
            levels.append((x, 2**s))
        seg = _conv(self.num_classes, n, 1, 1, self.dtype, "seg", conv_impl=ci)(x).astype(jnp.float32)
        chex.assert_shape(seg, (*features[0].shape[:-1], self.num_classes))
        deep = []
        if self.deep_supervision:
            deep = deep_heads({f"deep{i}": lv for i, lv in enumerate(levels[1:-1])}, self.num_classes, self.dtype,
                              ci)
            chex.assert_equal_shape([seg, *deep])
        return DecoderOutput(seg, deep, x)


class NNUNet3D(nn.Module):
    """nnU-Net 3D `[B, D, H, W, in_channels] -> {"seg": [B, D, H, W, num_classes], "deep": [...]}` (logits, f32).

    Spatial sizes must be divisible by 2**(num_stages-1) (16 for the default 5 stages; nnU-Net's 128^3 BraTS plan
    has 6 stages, a 4^3 bottleneck: `num_stages=6`). Parameters: {"encoder": {stage0..3}, "decoder": {stage4..,
    transp*, up_stage*, seg, deep*}}, the same tree as `GazeSegmenter(backbone="nnunet")`.
    """

    num_classes: int = 3
    width: int = 32
    in_channels: int = 4
    num_stages: int = 5
    max_width: int = MAX_WIDTH
    deep_supervision: bool = False
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS (transposed convs: BlockConvTranspose unless it resolves to xla)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        check_spatial(x, downsampling(self.num_stages), "nnunet3d.py NNUNet3D")
        chex.assert_axis_dimension(x, -1, self.in_channels)
        features = NNUNetEncoder(self.width, self.max_width, self.dtype, self.conv_impl, name="encoder")(x, train)
        out = NNUNetDecoder(self.num_classes, self.width, self.max_width, self.num_stages, self.deep_supervision,
                            self.dtype, self.conv_impl, name="decoder")(features, train)
        return {"seg": out.seg, "deep": out.deep}
