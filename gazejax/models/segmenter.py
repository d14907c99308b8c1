"""The composite BraTS model of Huang et al. (BMVC 2021, Sec. 3 and 4.1): EquiUnet backbone, optionally with SAN
and AAB refining the deepest encoder feature E4, plus the paper's baselines (+gaze*, +SAN*, ours-gaze, ours+surv).

Channels-last `[B, D, H, W, C]`. Parameters: {"encoder", "decoder"} (EquiUnet's tree, so a backbone checkpoint maps
in unchanged), plus "san"/"aab" (ours), "san"/"san_fuse" (+SAN*), "gaze_head" (+gaze*), "survival_head" (+surv).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.aab import AAB
from gazejax.models.layers import avg_pool, conv1x1, resize_align_corners
from gazejax.models.san import GRID_DOWNSAMPLING, SAN
from gazejax.models.unet3d import DOWNSAMPLING, EquiUnetDecoder, EquiUnetEncoder, check_spatial

Dtype = Any
METHODS = ("backbone", "ours", "ours_no_gaze", "gaze_star", "san_star")
_SAN_METHODS = ("ours", "ours_no_gaze", "san_star")
# Largest modulated probability 1 - 1e-6: keeps logit(p) finite in float32 (|logit| <= 13.8).
_LOG_P_MAX = -1e-6


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return jnp.where(a > -jnp.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def gaze_modulated_logits(seg_logits: jax.Array, gaze_logits: jax.Array) -> jax.Array:
    """+gaze* inference: the predicted gaze is a soft attention map on the segmentation probabilities.

    p' = sigmoid(seg) * sigmoid(gaze), per class channel (gaze `[B, *S, 1]` broadcasts over `[B, *S, K]`),
    returned as logits logit(p') so that sigmoid/threshold consumers are unchanged. Voxels the model expects an
    expert to ignore are suppressed; attended voxels keep their probability.
    """
    log_p = jax.nn.log_sigmoid(seg_logits) + jax.nn.log_sigmoid(gaze_logits)
    log_p = jnp.minimum(log_p, _LOG_P_MAX)
    return log_p - _log1mexp(log_p)


class GazeSegmenter(nn.Module):
    """`[B, D, H, W, in_channels] -> {"seg", "deep", "gaze", "survival"}` for one of `METHODS`:

    - "backbone": EquiUnet alone; "gaze" None.
    - "ours" / "ours_no_gaze": SAN on the input, AAB(e4, m2) -> e4', decoder on e4'. "gaze" = SAN's gaze logits
      `[B, D/16, H/16, W/16, 1]`. The two differ only in the gaze loss target (expert gaze vs. the segmentation
      mask), so they are the same network.
    - "gaze_star" (+gaze*): a 1x1 conv head on the decoder1 feature predicts full-resolution gaze logits; "gaze"
      is their 16^3 average pool (the SAN grid, so every method's gaze loss is the same). With train=False the
      seg logits are modulated by `gaze_modulated_logits`; "deep" never is.
    - "san_star" (+SAN*): M2 up-sampled (align-corners linear) to e4's grid, concatenated to e4, 1x1 conv (with
      bias) back to e4's 8w channels; no AAB. "gaze" = SAN's gaze logits.
    survival_classes > 0 (ours+surv) adds "survival" = Dense(GAP(e4')) logits `[B, survival_classes]`.
    "seg" `[B, D, H, W, num_classes]` and "deep" (list, empty when off) are logits in float32; absent heads are
    None. Spatial sizes must be divisible by 16 with a SAN or gaze head, by 8 for "backbone".
    """

    method: str = "ours"
    num_classes: int = 3
    width: int = 48
    in_channels: int = 4
    deep_supervision: bool = False
    san_width: int = 32
    aab_heads: int = 4
    aab_head_dim: int = 64
    survival_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        if self.method not in METHODS:
            raise ValueError(f"segmenter.py: unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        multiple = DOWNSAMPLING if self.method == "backbone" else GRID_DOWNSAMPLING
        check_spatial(x, multiple, f"segmenter.py GazeSegmenter(method={self.method!r})")
        chex.assert_axis_dimension(x, -1, self.in_channels)

        e1, e2, e3, e4 = EquiUnetEncoder(self.width, self.dtype, name="encoder")(x, train)
        gaze = None
        if self.method in _SAN_METHODS:
            m2, gaze = SAN(self.san_width, dtype=self.dtype, name="san")(x, train)
            e4 = self._fuse(e4, m2, train)
        out = EquiUnetDecoder(
            self.num_classes, self.width, self.deep_supervision, self.dtype, name="decoder"
        )((e1, e2, e3, e4), train)
        seg = out.seg
        if self.method == "gaze_star":
            full_gaze = conv1x1(out.last, 1, self.dtype, name="gaze_head").astype(jnp.float32)
            gaze = avg_pool(full_gaze, GRID_DOWNSAMPLING)
            if not train:
                seg = gaze_modulated_logits(seg, full_gaze)
        if gaze is not None:
            chex.assert_shape(gaze, (x.shape[0], *(s // GRID_DOWNSAMPLING for s in x.shape[1:-1]), 1))
        return {"seg": seg, "deep": out.deep, "gaze": gaze, "survival": self._survival(e4)}

    def _fuse(self, e4: jax.Array, m2: jax.Array, train: bool) -> jax.Array:
        """e4' from e4 and SAN's M2: AAB (ours) or concatenation + 1x1 conv (+SAN*)."""
        if self.method == "san_star":
            up = resize_align_corners(m2, e4.shape[1:-1]).astype(e4.dtype)
            return conv1x1(jnp.concatenate([e4, up], axis=-1), e4.shape[-1], self.dtype, name="san_fuse")
        return AAB(self.aab_heads, self.aab_head_dim, dtype=self.dtype, name="aab")(e4, m2, train)

    def _survival(self, e4: jax.Array) -> jax.Array | None:
        """ours+surv: global average pool of e4' -> Dense(survival_classes) logits, or None when off."""
        if not self.survival_classes:
            return None
        pooled = jnp.mean(e4.astype(jnp.float32), axis=tuple(range(1, e4.ndim - 1)))
        head = nn.Dense(self.survival_classes, dtype=self.dtype, param_dtype=jnp.float32, name="survival_head")
        return head(pooled).astype(jnp.float32)
