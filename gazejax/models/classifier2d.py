"""The 2D chest X-ray classifier of Huang et al. (BMVC 2021, Sec. 4.2): an EfficientNet-b0 (or other gazejax 2D)
encoder whose stride-32 feature is refined by SAN + AAB (before EfficientNet's / MobileNet's final 1x1 conv) on
its way to the backbone's head, with 5 sigmoid outputs; plus the paper's Table 4 baselines (Backbone, +gaze*,
+gaze loss).

Channels-last `[B, H, W, C]`. Parameters: "backbone" (the registry backbone built without a head, so a
torchvision checkpoint maps in unchanged), "classifier" (the head's Dense), and "san"/"aab" (ours) or
"gaze_head" (+gaze*, +gaze loss).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gazejax.models.aab import AAB
from gazejax.models.backbone_utils import classifier_head, global_avg_pool
from gazejax.models.cam import backbone_family, head_feature_map, headless_backbone
from gazejax.models.layers import conv1x1
from gazejax.models.san import GRID_DOWNSAMPLING, SAN

Dtype = Any
METHODS = ("backbone", "ours", "gaze_star", "gaze_loss")  # Table 4 rows: Backbone, ours, +gaze*, +gaze loss
E4_STRIDE = 32  # every gazejax 2D CNN backbone's deepest map is at 1/32
AAB_SITES = ("stride32", "head_map")  # where "ours" puts the AAB (see SANAABClassifier)
REFINE_FAMILIES = ("efficientnet", "mobilenet")  # backbones with a 1x1 conv after the stride-32 stage (`refine`)


def gaze_stride(method: str) -> int | None:
    """Input pixels per cell of the "gaze" output: 16 (SAN grid) for "ours", 32 (E4 grid) for the gaze-head
    baselines, None for "backbone" (no gaze output). Gaze targets must be rendered at this grid."""
    if method not in METHODS:
        raise ValueError(f"classifier2d.py: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return {"ours": GRID_DOWNSAMPLING, "gaze_star": E4_STRIDE, "gaze_loss": E4_STRIDE}.get(method)


def gaze_attention_pool(e4: jax.Array, gaze_logits: jax.Array) -> jax.Array:
    """+gaze* inference pooling `[B, h, w, C], [B, h, w, 1] -> [B, C]`: the predicted gaze probability
    g = sigmoid(gaze_logits) weights the global average, pooled = sum_ij g_ij E4_ij / sum_ij g_ij.

    A uniform gaze gives exactly GAP (the training-time pooling), so the head's input scale is unchanged; the
    weights are a softmax of log_sigmoid(gaze_logits) over the grid, the same ratio without underflow.
    """
    batch, channels = e4.shape[0], e4.shape[-1]
    weights = jax.nn.softmax(jax.nn.log_sigmoid(gaze_logits.astype(jnp.float32)).reshape(batch, -1), axis=1)
    return jnp.einsum("bt,btc->bc", weights, e4.astype(jnp.float32).reshape(batch, -1, channels))


class SANAABClassifier(nn.Module):
    """`x [B, H, W, in_channels] -> {"logits": [B, num_classes], "gaze": logits [B, h_g, w_g, 1] or None}`.

    E4 is the backbone's deepest map at stride 32 (`head_feature_map`: EfficientNet/MobileNet `final_conv`,
    ResNet `layer4`, DenseNet relu(`norm5`)), the map its own head pools. Then, per `method`:
    - "backbone": GAP(E4) -> dropout -> Dense ("classifier"); "gaze" None.
    - "ours": SAN on the 4x down-sampled image gives M2 and gaze logits at 1/16 (Sec. 3.1), which is finer than
      the 1/32 backbone grid: the AAB max-pools M2 by 2 onto it (attention grid = the backbone's, no up-sampling
      of M'), refines the map at `aab_site` (X' = X + M', Sec. 3.2), and the head pools the result as in
      "backbone". "gaze" = SAN's logits `[B, H/16, W/16, 1]`.
    - "gaze_star" (+gaze*): a 1x1 conv ("gaze_head", with bias; kernel normal(0, `gaze_head_std` = 0.01) as
      RetinaNet's prediction heads, so its first gaze gradients do not reshape E4, which the classifier shares;
      kaiming fan_out would give one output std sqrt(2) per channel) on E4 predicts gaze logits `[B, H/32, W/32, 1]`;
      with train=False the head's GAP is replaced by `gaze_attention_pool` (the predicted gaze as a soft
      spatial attention over E4); training pools with plain GAP, as in the paper ("use the estimated gaze as
      soft attention map during inference").
    - "gaze_loss" (+gaze loss): the same gaze head, trained with the KL saliency loss of the gaze-enhanced
      classifier; its output never enters the classification path (only its gradient reaches the encoder).
    AAB placement (`aab_site`) and size: the AAB's K/V/W^O projections and its FFN scale with the channels of
    the map it refines. "stride32" (default) refines the last stage's output, before EfficientNet's / MobileNet's
    1x1 `final_conv` (320 channels at width 1.0; via the backbone's `refine` hook, so the parameter tree stays
    torchvision's), which then expands E4' to 1280 channels for the head: at 224^2, EfficientNet-b0 ours has
    4.75M parameters against the backbone's 4.01M (AAB 0.68M, SAN 65K), MobileNet-v2 2.97M vs 2.23M. "head_map"
    refines E4 = `final_conv` itself (1280 channels): AAB 7.57M, i.e. ours 11.64M vs 4.01M (MobileNet-v2 9.86M vs
    2.23M), an attention block twice the size of the network it serves. ResNet and DenseNet have no 1x1 conv
    after their last stage, so both sites are E4 (ResNet-18: 512 channels, ours 12.71M vs 11.18M).
    Attributes:
      backbone: registry name of a 2D CNN backbone (efficientnet_b0 in the paper).
      num_classes: sigmoid outputs (5: atelectasis, cardiomegaly, consolidation, edema, pleural effusion).
      method: one of `METHODS`.
      san_width / aab_heads / aab_head_dim: SAN width (M2 has 2 * san_width channels), AAB heads and c_h (64).
      aab_ffn_mult: the AAB feed-forward hidden width in multiples of the refined map's channels (2, as 3D).
      aab_site: "stride32" (the last stage's output, before the final 1x1 conv) or "head_map" (E4), see above.
      backbone_kwargs: extra backbone constructor arguments (e.g. in_channels=1, width_mult).
      dropout: classifier dropout, None = the backbone's.
      dtype: computation dtype (parameters float32).
      conv_impl: convolution formulation (`conv_impl.IMPLS`) of the backbone (unless `backbone_kwargs` sets one),
        SAN and the gaze head; the parameters are the same whichever.
    """

    backbone: str = "efficientnet_b0"
    num_classes: int = 5
    method: str = "ours"
    san_width: int = 32
    aab_heads: int = 4
    aab_head_dim: int = 64
    aab_ffn_mult: int = 2
    aab_site: str = "stride32"
    backbone_kwargs: Mapping[str, Any] | None = None
    dropout: float | None = None
    gaze_head_std: float = 0.01  # kernel init std of the gaze head (+gaze*, +gaze loss; RetinaNet); 0 = kaiming
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array | None]:
        self._validate(x)
        net = headless_backbone(self, self.backbone, self.backbone_kwargs, self.dtype, self.conv_impl)
        gaze = None
        if self.method == "ours":
            m2, gaze = SAN(self.san_width, dtype=self.dtype, conv_impl=self.conv_impl, name="san")(x, train)
            aab = AAB(self.aab_heads, self.aab_head_dim, self.aab_ffn_mult, dtype=self.dtype, name="aab")
            if self.aab_site == "stride32" and backbone_family(self.backbone) in REFINE_FAMILIES:
                e4 = head_feature_map(self.backbone, net(x, train, refine=lambda f: aab(f, m2, train))["features"])
            else:
                e4 = aab(head_feature_map(self.backbone, net(x, train)["features"]), m2, train)
        else:
            e4 = head_feature_map(self.backbone, net(x, train)["features"])
        if self.method in ("gaze_star", "gaze_loss"):
            gaze = conv1x1(e4, 1, self.dtype, name="gaze_head", conv_impl=self.conv_impl,
                           kernel_std=self.gaze_head_std or None).astype(jnp.float32)
        if self.method == "gaze_star" and not train:
            pooled = gaze_attention_pool(e4, gaze)
        else:
            pooled = global_avg_pool(e4)
        rate = getattr(net, "dropout", 0.0) if self.dropout is None else self.dropout
        logits = classifier_head(pooled.astype(self.dtype), self.num_classes, "classifier", self.dtype, rate, train)
        if gaze is not None:
            stride = gaze_stride(self.method)
            chex.assert_shape(gaze, (x.shape[0], x.shape[1] // stride, x.shape[2] // stride, 1))
        return {"logits": logits.astype(jnp.float32), "gaze": gaze}

    def _validate(self, x: jax.Array) -> None:
        """One-line ValueErrors for an unknown method or backbone, or an input the method cannot take."""
        gaze_stride(self.method)
        backbone_family(self.backbone)
        if self.aab_site not in AAB_SITES:
            raise ValueError(f"classifier2d.py: aab_site must be one of {', '.join(AAB_SITES)}, got {self.aab_site!r}")
        if self.num_classes < 1:
            raise ValueError(f"classifier2d.py: num_classes must be >= 1, got {self.num_classes}")
        multiple = 1 if self.method == "backbone" else E4_STRIDE
        if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
            raise ValueError(f"classifier2d.py: method {self.method!r} expects [B, H, W, C] with H, W divisible by "
                             f"{multiple}, got shape {x.shape}")
