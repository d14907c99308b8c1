"""The composite BraTS model of Huang et al. (BMVC 2021, Sec. 3 and 4.1): a 3D U-Net backbone (EquiUnet, or the
Table 3 nnU-Net / DMFNet), optionally with SAN and AAB refining the encoder feature E4 (1/8 resolution), plus the
paper's baselines (+gaze*, +SAN*, ours-gaze, ours+surv) and Table 3's CBAM / TASN replacements of SAN+AAB.

Channels-last `[B, D, H, W, C]`. Parameters: {"encoder", "decoder"} (the backbone's own tree, so a backbone
checkpoint maps in unchanged), plus "san"/"aab" (ours), "san"/"san_fuse" (+SAN*), "gaze_head" (+gaze*),
"survival_head" (+surv), "tasn" (TASN); CBAM's gates live inside "encoder"/"decoder" (`cbam*`).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gazejax.models import dmfnet, nnunet3d
from gazejax.models.aab import AAB
from gazejax.models.attention3d import CBAMEquiUnetDecoder, CBAMEquiUnetEncoder, TrilinearAttention
from gazejax.models.layers import avg_pool, constrain_spatial, conv1x1, resize_align_corners
from gazejax.models.san import GRID_DOWNSAMPLING, SAN
from gazejax.models.unet3d import DOWNSAMPLING, EquiUnetDecoder, EquiUnetEncoder, check_spatial

Dtype = Any
METHODS = ("backbone", "ours", "ours_no_gaze", "gaze_star", "san_star")  # Table 1 variants, on every backbone
ATTENTION_METHODS = ("cbam", "tasn")  # Table 3: SAN+AAB replaced by gaze-supervised attention modules
ALL_METHODS = METHODS + ATTENTION_METHODS
BACKBONES = ("equiunet", "nnunet", "dmfnet")
DEFAULT_WIDTH = {"equiunet": 48, "nnunet": 32, "dmfnet": 128}  # the papers' widths (EquiUnet w, nnU-Net base, c)
_BACKBONE_MULTIPLE = {"equiunet": DOWNSAMPLING, "nnunet": nnunet3d.downsampling(5), "dmfnet": dmfnet.DOWNSAMPLING}
_SAN_METHODS = ("ours", "ours_no_gaze", "san_star")
GAZE_STAR_ATTENTION = ("feature", "output", "gate")  # how +gaze* uses its predicted gaze (see GazeSegmenter)
# Largest modulated probability 1 - 1e-6: keeps logit(p) finite in float32 (|logit| <= 13.8).
_LOG_P_MAX = -1e-6


def _log1mexp(a: jax.Array) -> jax.Array:
    """log(1 - exp(a)) for a < 0, stable on both sides of -ln 2 (Maechler 2012)."""
    return jnp.where(a > -jnp.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _prob_to_logits(log_p: jax.Array) -> jax.Array:
    """logit(p) from log p (p < 1 kept by clamping at `_LOG_P_MAX`)."""
    log_p = jnp.minimum(log_p, _LOG_P_MAX)
    return log_p - _log1mexp(log_p)


def gaze_modulated_logits(seg_logits: jax.Array, gaze_logits: jax.Array) -> jax.Array:
    """The hard gate p' = sigmoid(seg) * sigmoid(gaze) as logits (`gaze_star_attention="gate"`, inference only).

    Kept to reproduce earlier runs: it is NOT scale-preserving. A gaze map is a blurred fixation density whose
    sigmoid is well below 1 over most of a tumour, so even a perfect gaze head pushes most of the whole tumour
    under the 0.5 threshold. Gaze `[B, *S, 1]` broadcasts over seg `[B, *S, K]`.
    """
    return _prob_to_logits(jax.nn.log_sigmoid(seg_logits) + jax.nn.log_sigmoid(gaze_logits))


def gaze_output_attention_logits(seg_logits: jax.Array, gaze_logits: jax.Array) -> jax.Array:
    """p' = sigmoid(seg) * (1 + g) / 2 with g = sigmoid(gaze), as logits (`gaze_star_attention="output"`).

    Scale-preserving: where the gaze head is sure an expert looks (g -> 1) the probability is unchanged; where
    it is sure nobody looks (g -> 0) it is halved. Gaze `[B, *S, 1]` broadcasts over seg `[B, *S, K]`.
    """
    half_one_plus_g = jnp.logaddexp(0.0, jax.nn.log_sigmoid(gaze_logits)) - jnp.log(2.0)  # log((1 + g) / 2)
    return _prob_to_logits(jax.nn.log_sigmoid(seg_logits) + half_one_plus_g)


def gaze_feature_attention_logits(seg_logits: jax.Array, gaze_logits: jax.Array, head_bias: jax.Array
                                  ) -> jax.Array:
    """Residual soft attention (1 + g) * F on the decoder's last feature F, before its 1x1 head (`"feature"`).

    The head is linear, seg = W F + b, so W ((1 + g) F) + b = b + (1 + g) (seg - b) exactly: the attention is
    applied through the logits without re-running the head. g = sigmoid(gaze) in (0, 1) scales features by 1..2
    (the residual form of Wang et al. 2017, "Residual Attention Network": the map can emphasise, never erase).
    """
    g = jax.nn.sigmoid(gaze_logits.astype(jnp.float32))
    bias = jnp.asarray(head_bias, jnp.float32)
    return bias + (1.0 + g) * (seg_logits - bias)


class GazeSegmenter(nn.Module):
    """`[B, D, H, W, in_channels] -> {"seg", "deep", "gaze", "survival"}` for one of `ALL_METHODS`:

    - "backbone": the backbone alone; "gaze" None.
    - "ours" / "ours_no_gaze": SAN on the input, AAB(e4, m2) -> e4', decoder on e4'. "gaze" = SAN's gaze logits
      `[B, D/16, H/16, W/16, 1]`. The two differ only in the gaze loss target (expert gaze vs. the segmentation
      mask), so they are the same network.
    - "gaze_star" (+gaze*): a 1x1 conv head ("gaze_head") on the decoder's last full-resolution feature predicts
      full-resolution gaze logits; "gaze" is their 16^3 average pool (the SAN grid: gaze metrics compare every
      method on one grid), and with train=True "gaze_full" holds the full-resolution logits (the loss supervises
      them against the up-sampled target). The predicted gaze is a soft attention map (Sec. 4.1, [29]) used as
      `gaze_star_attention` says: "feature" (default) weights the last decoder feature by (1 + g) before the
      output head, in training and inference alike (`gaze_feature_attention_logits`); "output" multiplies the
      probabilities by (1 + g) / 2 at inference only; "gate" is the earlier p * g hard gate at inference only
      (not scale-preserving, kept to reproduce old runs). "deep" is never modulated. The gaze logits are offset by
      logit(`gaze_star_prior`), so the map starts near the mean gaze target instead of 0.5 everywhere (the prior
      initialisation of Lin et al. 2017, RetinaNet): without it the first steps' large gaze gradients reshape the
      decoder feature that the segmentation head shares (on the demo the ET channel then never recovers).
      The head's kernel starts at normal(0, `gaze_star_head_std` = 0.01), the other half of that recipe: with
      kaiming fan_out (std sqrt(2) per channel for one output) its first gaze gradients pull the shared feature
      so hard that on the demo at data ratio 0.5, seed 0, the seg loss stalls (WT Dice 11 %, ET 0 on 3 folds).
    - "san_star" (+SAN*): M2 up-sampled (align-corners linear) to e4's grid, concatenated to e4, 1x1 conv (with
      bias) back to e4's channels; no AAB. "gaze" = SAN's gaze logits.
    - "cbam" (Unet+CBAM, EquiUnet only): open_brats2020's Att_EquiUnet, CBAM after encoder1..4, bottom and
      bottom_2. "gaze" = encoder4's spatial-attention logits (1/8: of the encoder levels, the grid nearest the
      1/16 gaze grid) average-pooled by 2 to the gaze grid; the other CBAM maps are not supervised.
    - "tasn" (Unet+TASN, any backbone): `TrilinearAttention` refines e4 in place of SAN+AAB. "gaze" = the structure
      attention logits, "gaze_extra" = [detailed attention logits], both average-pooled by 2 to the gaze grid
      (the paper supervises both).
    The attention methods add the key "gaze_extra", a list of further gaze-grid logits `[B, D/16, H/16, W/16, 1]`
    that take the same gaze loss as "gaze" (empty for "cbam"); the other methods keep exactly the four keys
    (+gaze* adds "gaze_full" in training).
    survival_classes > 0 (ours+surv) adds "survival" = Dense(GAP(e4')) logits `[B, survival_classes]`.
    "seg" `[B, D, H, W, num_classes]` and "deep" (list, empty when off) are logits in float32; absent heads are
    None. `backbone` is "equiunet" (default), "nnunet" (nnunet3d.py, 5 stages) or "dmfnet" (dmfnet.py); E4 is
    always the 1/8-resolution encoder feature. `width` None means the backbone's paper width (`DEFAULT_WIDTH`);
    `norm` overrides DMFNet's normalisation ("bn" default, "gn", "in"). Spatial sizes must be divisible by 16
    with a SAN, gaze head or attention module or with nnU-Net/DMFNet, by 8 for the EquiUnet "backbone".
    """

    method: str = "ours"
    num_classes: int = 3
    width: int | None = None
    in_channels: int = 4
    deep_supervision: bool = False
    san_width: int = 32
    aab_heads: int = 4
    aab_head_dim: int = 64
    aab_scale_dim: int = 0  # AAB's Eq. 1 divides by sqrt(aab_scale_dim); 0 = per-head width (see AAB.scale_dim)
    gaze_star_attention: str = "feature"  # GAZE_STAR_ATTENTION: how +gaze* applies its gaze map
    gaze_star_prior: float = 0.1  # initial mean of +gaze*'s gaze map: its logits are offset by logit(prior)
    gaze_star_head_std: float = 0.01  # +gaze*'s gaze-head kernel init std (RetinaNet); 0 = kaiming fan_out
    survival_classes: int = 0
    dtype: Dtype = jnp.float32
    backbone: str = "equiunet"
    norm: str | None = None
    remat: bool = False  # per-block rematerialisation of the EquiUnet encoder/decoder (memory for compute)
    conv_impl: str = "auto"  # convolution formulation (conv_impl.IMPLS) of every conv (backbone, SAN, heads)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        self._validate(x)
        x = constrain_spatial(x)  # block boundaries keep volumes split along depth under mesh.spatial > 1
        encoder, decoder = self._backbone_modules()
        encoded = encoder(x, train)
        features, cbam_maps = encoded if self.method == "cbam" else (encoded, None)
        *skips, e4 = features
        gaze, gaze_extra = None, []
        if self.method in _SAN_METHODS:
            m2, gaze = SAN(self.san_width, dtype=self.dtype, conv_impl=self.conv_impl, name="san")(x, train)
            e4 = constrain_spatial(self._fuse(e4, m2, train))
        elif self.method == "tasn":
            e4, structure, detail = TrilinearAttention(self.dtype, self.conv_impl, name="tasn")(e4, train)
            gaze, gaze_extra = self._to_gaze_grid(structure, x), [self._to_gaze_grid(detail, x)]
        elif self.method == "cbam":
            gaze = self._to_gaze_grid(cbam_maps[-1], x)
        out = decoder((*skips, e4), train)
        seg = constrain_spatial(out.seg)
        full_gaze = None
        if self.method == "gaze_star":
            full_gaze = conv1x1(out.last, 1, self.dtype, name="gaze_head", conv_impl=self.conv_impl,
                                kernel_std=self.gaze_star_head_std or None).astype(jnp.float32)
            full_gaze = full_gaze + float(np.log(self.gaze_star_prior / (1.0 - self.gaze_star_prior)))
            gaze = avg_pool(full_gaze, GRID_DOWNSAMPLING)
            seg = self._gaze_star_seg(decoder, seg, full_gaze, train)
        if gaze is not None:
            chex.assert_shape([gaze, *gaze_extra], (x.shape[0], *(s // GRID_DOWNSAMPLING for s in x.shape[1:-1]), 1))
        result = {"seg": seg, "deep": out.deep, "gaze": gaze, "survival": self._survival(e4)}
        if self.method in ATTENTION_METHODS:
            result["gaze_extra"] = gaze_extra
        if full_gaze is not None and train:
            result["gaze_full"] = full_gaze
        return result

    def _gaze_star_seg(self, decoder: nn.Module, seg: jax.Array, full_gaze: jax.Array, train: bool) -> jax.Array:
        """+gaze*'s seg logits after the gaze attention of `gaze_star_attention` (see the class docstring)."""
        if self.gaze_star_attention == "feature":
            return gaze_feature_attention_logits(seg, full_gaze, _head_bias(decoder))
        if train:  # "output" and "gate" act at inference only
            return seg
        if self.gaze_star_attention == "output":
            return gaze_output_attention_logits(seg, full_gaze)
        return gaze_modulated_logits(seg, full_gaze)

    def _validate(self, x: jax.Array) -> None:
        """One-line ValueErrors for an unknown method/backbone, a bad combination or a bad input shape."""
        if self.method not in ALL_METHODS:
            raise ValueError(f"segmenter.py: unknown method {self.method!r}; expected one of {', '.join(ALL_METHODS)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"segmenter.py: unknown backbone {self.backbone!r}; expected one of "
                             f"{', '.join(BACKBONES)}")
        if self.method == "cbam" and self.backbone != "equiunet":
            raise ValueError(f"segmenter.py: method 'cbam' is Att_EquiUnet and needs backbone 'equiunet', "
                             f"not {self.backbone!r}")
        if self.remat and self.backbone != "equiunet":
            raise ValueError(f"segmenter.py: remat is implemented for the equiunet backbone, not {self.backbone!r}")
        if self.gaze_star_attention not in GAZE_STAR_ATTENTION:
            raise ValueError(f"segmenter.py: unknown gaze_star_attention {self.gaze_star_attention!r}; expected one "
                             f"of {', '.join(GAZE_STAR_ATTENTION)}")
        if not 0.0 < self.gaze_star_prior < 1.0:
            raise ValueError(f"segmenter.py: gaze_star_prior must be in (0, 1), got {self.gaze_star_prior}")
        if self.norm is not None and self.backbone != "dmfnet":
            raise ValueError(f"segmenter.py: norm={self.norm!r} is only configurable for backbone 'dmfnet'")
        multiple = _BACKBONE_MULTIPLE[self.backbone]
        if self.method != "backbone":
            multiple = max(multiple, GRID_DOWNSAMPLING)
        check_spatial(x, multiple, f"segmenter.py GazeSegmenter(backbone={self.backbone!r}, method={self.method!r})")
        chex.assert_axis_dimension(x, -1, self.in_channels)

    def _backbone_modules(self) -> tuple[nn.Module, nn.Module]:
        """The backbone's encoder (`x -> features`, E4 last) and decoder (`features -> DecoderOutput`)."""
        w = DEFAULT_WIDTH[self.backbone] if self.width is None else self.width
        k, deep, dt, ci = self.num_classes, self.deep_supervision, self.dtype, self.conv_impl
        if self.backbone == "nnunet":
            return (nnunet3d.NNUNetEncoder(w, dtype=dt, conv_impl=ci, name="encoder"),
                    nnunet3d.NNUNetDecoder(k, w, deep_supervision=deep, dtype=dt, conv_impl=ci, name="decoder"))
        if self.backbone == "dmfnet":
            norm = self.norm or "bn"
            return (dmfnet.DMFNetEncoder(width=w, norm=norm, dtype=dt, conv_impl=ci, name="encoder"),
                    dmfnet.DMFNetDecoder(width=w, norm=norm, dtype=dt, conv_impl=ci, num_classes=k,
                                         deep_supervision=deep, name="decoder"))
        if self.method == "cbam":
            return (CBAMEquiUnetEncoder(w, dtype=dt, conv_impl=ci, name="encoder"),
                    CBAMEquiUnetDecoder(k, w, deep, dt, conv_impl=ci, name="decoder"))
        return (EquiUnetEncoder(w, dt, self.remat, ci, name="encoder"),
                EquiUnetDecoder(k, w, deep, dt, self.remat, ci, name="decoder"))

    @staticmethod
    def _to_gaze_grid(logits: jax.Array, x: jax.Array) -> jax.Array:
        """Average-pools attention logits `[B, *S_a, 1]` to the 1/16 gaze grid of input `x` (float32)."""
        grid = [s // GRID_DOWNSAMPLING for s in x.shape[1:-1]]
        return avg_pool(logits, [a // g for a, g in zip(logits.shape[1:-1], grid)]).astype(jnp.float32)

    def _fuse(self, e4: jax.Array, m2: jax.Array, train: bool) -> jax.Array:
        """e4' from e4 and SAN's M2: AAB (ours) or concatenation + 1x1 conv (+SAN*)."""
        if self.method == "san_star":
            up = resize_align_corners(m2, e4.shape[1:-1]).astype(e4.dtype)
            return conv1x1(jnp.concatenate([e4, up], axis=-1), e4.shape[-1], self.dtype, name="san_fuse",
                           conv_impl=self.conv_impl)
        return AAB(self.aab_heads, self.aab_head_dim, dtype=self.dtype, scale_dim=self.aab_scale_dim, name="aab")(
            e4, m2, train)

    def _survival(self, e4: jax.Array) -> jax.Array | None:
        """ours+surv: global average pool of e4' -> Dense(survival_classes) logits, or None when off."""
        if not self.survival_classes:
            return None
        pooled = jnp.mean(e4.astype(jnp.float32), axis=tuple(range(1, e4.ndim - 1)))
        head = nn.Dense(self.survival_classes, dtype=self.dtype, param_dtype=jnp.float32, name="survival_head")
        return head(pooled).astype(jnp.float32)


def _head_bias(decoder: nn.Module) -> jax.Array:
    """The bias of a backbone decoder's 1x1 output head ("outconv" in EquiUnet/Att_EquiUnet, "seg" in nnU-Net and
    DMFNet; DMFNet's head has none, so 0)."""
    params = decoder.variables["params"]
    head = params.get("outconv", params.get("seg"))
    if head is None:
        raise ValueError(f"segmenter.py: decoder {type(decoder).__name__} has no 'outconv' or 'seg' output head")
    return head.get("bias", jnp.zeros((), jnp.float32))
