"""DMFNet (Chen et al., MICCAI 2019, "3D Dilated Multi-Fiber Network for Real-time Brain Tumor Segmentation in
MRI"), a Table 3 backbone of Huang et al. (BMVC 2021), split into encoder and decoder so SAN+AAB can refine its E4.

3D only, channels-last `[B, D, H, W, C]`; the last spatial axis is the slice axis (NIfTI Z), as the reference's
`[H, W, D]`, so its in-plane 3x3x1 kernels stay in-plane. Structure (published code, `models/DMFNet_16x.py`):
  stem      conv3 stride 2 (no bias), C_in -> n                                               1/2
  block2    3 dilated multi-fiber (DMF) units, c (first stride 2)                             1/4
  block3    3 DMF units, 2c (first stride 2)                        = E4                     1/8
  block4    3 multi-fiber (MF) units 3c, 3c, 2c (first stride 2)    (decoder side, from E4')  1/16
  decoder   trilinear x2 (half-pixel, align_corners=False), concat [skip, up], one MF unit per level
            (2c, c, n), a last x2 up-sampling and a 1x1 conv head without bias.
with n = c/4 (paper: n = 32, c = 128, 3.88M parameters; a 512-channel block4 would give 4.64M, so the 3c = 384
of the code is what the paper counts; `bottom_mult` makes it configurable). Units are pre-activation
(norm -> ReLU -> conv, all convs bias-free, kaiming-normal fan_in init as the reference).

E4 is block3's output (1/8, 2c channels): refined E4' feeds block4 and the first decoder skip, the same convention
as EquiUnet's encoder4 and nnU-Net's stage 3 (see nnunet3d.py).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gazejax.models.conv_impl import conv_general_dilated_for
from gazejax.models.layers import constrain_spatial
from gazejax.models.nnunet3d import deep_heads
from gazejax.models.unet3d import DecoderOutput, check_spatial

Dtype = Any
NORMS = ("bn", "gn", "in")
DOWNSAMPLING = 16  # stem, block2, block3, block4 each halve the grid
DILATIONS = (1, 2, 3)  # the DMF unit's three weighted 3x3x3 branches
# torch kaiming_normal_() defaults: fan_in, gain sqrt(2), untruncated normal (grouped: fan_in = C_in/g * k^3).
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def fiber_groups(stem_width: int, width: int, groups: int = 16) -> int:
    """Fibres per grouped conv: the largest divisor of `groups` that divides every grouped conv's channels.

    Grouped convs see n, c, 2c, 3c (and bottom_mult * c) channels, so the constraint is gcd(n, c); the paper's
    n = 32, c = 128 keep g = 16, narrow test widths scale it down (n = 4 -> g = 4).
    """
    common = int(np.gcd(stem_width, width))
    return max(d for d in range(1, groups + 1) if groups % d == 0 and common % d == 0)


def norm_layer(kind: str, train: bool, dtype: Dtype, name: str) -> nn.Module:
    """The reference's `normalization(planes, norm)`: "bn" BatchNorm (paper; torch momentum 0.1), "gn"
    GroupNorm(4), "in" InstanceNorm without affine (torch's InstanceNorm3d default); eps 1e-5 throughout."""
    common = dict(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)
    if kind == "bn":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, **common)
    if kind == "gn":
        return nn.GroupNorm(num_groups=4, **common)
    if kind == "in":
        return nn.InstanceNorm(use_scale=False, use_bias=False, **common)
    raise ValueError(f"dmfnet.py: unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


def upsample_half_pixel(x: jax.Array, factor: int = 2) -> jax.Array:
    """Trilinear up-sampling of `[B, *S, C]` with half-pixel centres, torch `Upsample(align_corners=False)`
    (for up-sampling, `jax.image.resize`'s linear kernel clamps at the borders exactly as torch does)."""
    shape = (x.shape[0], *(s * factor for s in x.shape[1:-1]), x.shape[-1])
    return jax.image.resize(x, shape, "linear").astype(x.dtype)


class PreActConv(nn.Module):
    """norm -> ReLU -> conv (bias off, groups, dilation, stride), the reference's Conv3d_Block / DilatedConv3DBlock.

    Padding (k - 1) // 2 * dilation per axis keeps the grid (divided by the stride)."""

    features: int
    kernel: Sequence[int] = (3, 3, 3)
    stride: int = 1
    groups: int = 1
    dilation: int = 1
    norm: str = "bn"
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS (grouped convs: native forward; under onednn `_grouped`'s gradients)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = nn.relu(norm_layer(self.norm, train, self.dtype, "bn")(x))
        pad = [((k - 1) // 2 * self.dilation,) * 2 for k in self.kernel]
        return nn.Conv(self.features, tuple(self.kernel), strides=self.stride, padding=pad,
                       kernel_dilation=self.dilation, feature_group_count=self.groups, use_bias=False,
                       dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kaiming_normal_fan_in,
                       conv_general_dilated=conv_general_dilated_for(self.conv_impl), name="conv")(h)


class MFUnit(nn.Module):
    """(Dilated) multi-fiber unit `[B, *S, C_in] -> [B, *S/stride, features]`.

    Multiplexer: two 1x1x1 convs (C_in -> C_in/4 -> mid, mid = min(C_in, features)) mix information across the
    fibres; then a grouped 3x3x3 conv (stride; with several `dilations`, one branch per dilation summed with
    learnable scalar weights `weight1..`, initialised to 1: the DMF unit) and a grouped in-plane 3x3x1 conv.
    Residual: identity, or a pre-activated 1x1x1 (stride 1) / 2x2x2 stride-2 conv when the shape changes.
    """

    features: int
    groups: int = 16
    stride: int = 1
    dilations: Sequence[int] = (1,)
    norm: str = "bn"
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x, c_in, f = constrain_spatial(x), x.shape[-1], self.features
        conv = functools.partial(PreActConv, norm=self.norm, dtype=self.dtype, conv_impl=self.conv_impl)
        h = conv(c_in // 4, (1, 1, 1), name="conv1x1x1_in1")(x, train)
        h = conv(min(c_in, f), (1, 1, 1), name="conv1x1x1_in2")(h, train)
        if len(self.dilations) == 1:
            h = conv(f, (3, 3, 3), self.stride, self.groups, self.dilations[0], name="conv3x3x3_m1")(h, train)
        else:
            branches = [conv(f, (3, 3, 3), self.stride, self.groups, d, name=f"conv3x3x3_m1_{i}")(h, train)
                        for i, d in enumerate(self.dilations)]
            weights = [self.param(f"weight{i + 1}", nn.initializers.ones, (1,)) for i in range(len(branches))]
            h = sum(w.astype(b.dtype) * b for w, b in zip(weights, branches))
        h = conv(f, (3, 3, 1), 1, self.groups, name="conv3x3x3_m2")(h, train)
        shortcut = x
        if self.stride == 2:
            shortcut = conv(f, (2, 2, 2), 2, name="conv2x2x2_shortcut")(x, train)
        elif c_in != f:
            shortcut = conv(f, (1, 1, 1), name="conv1x1x1_shortcut")(x, train)
        return constrain_spatial(h + shortcut)


def _units(x: jax.Array, widths: Sequence[int], name: str, groups: int, dilations: Sequence[int], norm: str,
           dtype: Dtype, train: bool, conv_impl: str = "auto") -> jax.Array:
    """A block of MF/DMF units `{name}_0..`, the first with stride 2 (call inside a compact method)."""
    for i, w in enumerate(widths):
        x = MFUnit(w, groups, 2 if i == 0 else 1, dilations, norm, dtype, conv_impl, name=f"{name}_{i}")(x, train)
    return x


class DMFNetFields(nn.Module):
    """Hyper-parameters shared by DMFNet's encoder, decoder and whole model (a field set, not a layer)."""

    width: int = 128  # c, the width of the 1/4-resolution block (paper 128)
    stem_width: int | None = None  # n; None: width // 4 (the paper's 32 for c = 128)
    groups: int = 16  # fibres per grouped conv (paper 16), scaled down by `fiber_groups` for narrow widths
    norm: str = "bn"  # one of NORMS
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    def fibres(self) -> tuple[int, int, int]:
        """(c, n, g): block width, stem width and the number of fibres of every grouped conv."""
        n = self.stem_width or self.width // 4
        return self.width, n, fiber_groups(n, self.width, self.groups)

    def shared_fields(self) -> dict[str, Any]:
        """This field set as keyword arguments, to build the parts with."""
        return {k: getattr(self, k) for k in ("width", "stem_width", "groups", "norm", "dtype", "conv_impl")}


class DMFNetEncoder(DMFNetFields):
    """Stem + two DMF blocks: `[B, D, H, W, C_in] -> (x1 [1/2, n], x2 [1/4, c], e4 [1/8, 2c])`."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        if x.ndim != 5:
            raise ValueError(f"dmfnet.py: DMFNet is 3D; expected [B, D, H, W, C] input, got shape {x.shape}")
        check_spatial(x, 8, "dmfnet.py DMFNetEncoder")
        c, n, g = self.fibres()
        x1 = nn.Conv(n, (3, 3, 3), strides=2, padding=[(1, 1)] * 3, use_bias=False, dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=kaiming_normal_fan_in,
                     conv_general_dilated=conv_general_dilated_for(self.conv_impl), name="encoder_block1")(x)
        x2 = _units(x1, (c,) * 3, "encoder_block2", g, DILATIONS, self.norm, self.dtype, train,
                    self.conv_impl)
        e4 = _units(x2, (2 * c,) * 3, "encoder_block3", g, DILATIONS, self.norm, self.dtype, train,
                    self.conv_impl)
        chex.assert_shape(e4, (x.shape[0], *(s // 8 for s in x.shape[1:-1]), 2 * c))
        return x1, x2, e4


class DMFNetDecoder(DMFNetFields):
    """block4 (MF units at 1/16) from E4 + three up-sampling levels: `(x1, x2, e4) -> DecoderOutput`.

    Deep supervision is a gazejax addition (the reference has none): heads `deep_block1..3` on the three decoder
    units (1/8, 1/4, 1/2), coarse to fine, up-sampled to full resolution. `last` is the full-resolution feature
    the `seg` head reads (n channels).
    """

    num_classes: int = 3
    bottom_mult: int = 3  # block4 width / c: 3 in the published code (3.88M parameters)
    deep_supervision: bool = False

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False) -> DecoderOutput:
        x1, x2, e4 = features
        c, n, g = self.fibres()
        m = self.bottom_mult * c
        x = _units(e4, (m, m, 2 * c), "encoder_block4", g, (1,), self.norm, self.dtype, train, self.conv_impl)
        levels = {}
        for i, (skip, w) in enumerate([(e4, 2 * c), (x2, c), (x1, n)], start=1):
            up = upsample_half_pixel(x, 2)
            x = MFUnit(w, g, 1, (1,), self.norm, self.dtype, self.conv_impl, name=f"decoder_block{i}")(
                jnp.concatenate([skip, up], -1), train)
            levels[f"deep_block{i}"] = (x, 2 ** (4 - i))
        last = upsample_half_pixel(x, 2)
        seg = nn.Conv(self.num_classes, (1, 1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=kaiming_normal_fan_in, conv_general_dilated=conv_general_dilated_for(self.conv_impl),
                      name="seg")(last).astype(jnp.float32)
        chex.assert_shape(seg, (*last.shape[:-1], self.num_classes))
        deep = deep_heads(levels, self.num_classes, self.dtype, self.conv_impl) if self.deep_supervision else []
        return DecoderOutput(seg, deep, last)


class DMFNet(DMFNetFields):
    """DMFNet `[B, D, H, W, in_channels] -> {"seg": [B, D, H, W, num_classes], "deep": [...]}` (logits, f32).

    Spatial sizes must be divisible by 16. With norm "bn" the variables hold "batch_stats" (apply with
    `mutable=["batch_stats"]` when train=True). Parameters: {"encoder": {encoder_block1..3_*}, "decoder":
    {encoder_block4_*, decoder_block1..3, seg, deep_block*}}, the tree of `GazeSegmenter(backbone="dmfnet")`.
    """

    num_classes: int = 3
    in_channels: int = 4
    bottom_mult: int = 3
    deep_supervision: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        check_spatial(x, DOWNSAMPLING, "dmfnet.py DMFNet")
        chex.assert_axis_dimension(x, -1, self.in_channels)
        features = DMFNetEncoder(**self.shared_fields(), name="encoder")(x, train)
        out = DMFNetDecoder(**self.shared_fields(), num_classes=self.num_classes, bottom_mult=self.bottom_mult,
                            deep_supervision=self.deep_supervision, name="decoder")(features, train)
        return {"seg": out.seg, "deep": out.deep}
