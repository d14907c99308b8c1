"""Selective Attention Network (SAN, Huang et al. BMVC 2021, Sec. 3.1): a shallow network on the 4x down-sampled
image whose second conv-group feature M2 summarises "where to look" and whose 1x1 head predicts the expert's gaze.

N-d and channels-last: `[B, D, H, W, C]` for BraTS, and the same class on `[B, H, W, C]` for chest X-rays (the
paper's 2D case "D = 1 with 2D kernels").
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.layers import UBlock, avg_pool, conv1x1, max_pool

Dtype = Any
INPUT_DOWNSAMPLING = 4  # the paper's "4x down-sampled input images I^ds"
GRID_DOWNSAMPLING = 16  # 4x input down-sampling, then two max-pools of 2


class SAN(nn.Module):
    """SAN `[B, *S, C] -> (m2 [B, *S/16, 2*width], gaze_logits [B, *S/16, 1])`.

    The 4x down-sampling is done inside by non-overlapping 4^n average pooling (the paper only says "4x
    down-sampled input"; averaging is the anti-aliased choice and keeps all four MR modalities' intensities).
    Then `groups` conv groups, each 2 x (conv3 + GroupNorm + ReLU) then max-pool 2, with widths width*2**g
    (32, 64 by default); M2 is the last group's output; the gaze head is a 1x1 conv with bias (logits; the
    gaze loss applies the sigmoid, Eq. 4).
    """

    width: int = 32
    groups: int = 2
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"  # conv_impl.IMPLS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        del train
        multiple = INPUT_DOWNSAMPLING * 2**self.groups
        if x.ndim not in (4, 5) or any(s % multiple for s in x.shape[1:-1]):
            raise ValueError(
                f"san.py: expected [B, D, H, W, C] or [B, H, W, C] with spatial sizes divisible by {multiple}, "
                f"got {x.shape}"
            )
        batch, grid = x.shape[0], tuple(s // multiple for s in x.shape[1:-1])
        h = avg_pool(x, INPUT_DOWNSAMPLING)
        for g in range(self.groups):
            w = self.width * 2**g
            h = UBlock(w, w, dtype=self.dtype, conv_impl=self.conv_impl, name=f"group{g + 1}")(h)
            h = max_pool(h, 2)
        gaze = conv1x1(h, 1, self.dtype, name="gaze_head", conv_impl=self.conv_impl).astype(jnp.float32)
        chex.assert_shape(h, (batch, *grid, self.width * 2 ** (self.groups - 1)))
        chex.assert_shape(gaze, (batch, *grid, 1))
        return h, gaze
