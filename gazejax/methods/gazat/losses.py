"""Self-supervised losses of GazAT (Sec. 2.3) and its baselines: NT-Xent / InfoNCE over 2N views (SimCLR), McGIP's
gaze-similarity positives, BYOL, MoCo v2, attention transfer at several layers, and the regional contrastive loss.

Pure jnp, jit-traceable. Embeddings `[N, D]` are L2-normalised inside the losses (cosine similarity); attention maps
are `[B, h, w]`; per-location feature maps `[B, h, w, D]`; masks `[B]` bool select the samples a term averages over
(a term with no selected sample is 0).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from gazejax.models.ssl import activation_attention, l2_normalize  # noqa: F401  (used and re-exported)

Array = jax.Array
_EPS = 1e-8
_NEG = -1e9  # a logit that contributes exp(-1e9) = 0 to a log-sum-exp without producing NaN gradients


def _masked_mean(values: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def nt_xent(z_a: Array, z_b: Array, temperature: float, positives: Array | None = None) -> Array:
    """NT-Xent / InfoNCE over the 2N views (Sec. 2.3.2, Eq. L_contrast; Chen et al. 2020).

    z_a, z_b: `[N, D]` projections of the two views of N images. For anchor k among the 2N views,
    -log exp(sim(z_k, z_k+)/tau) / sum_{j != k} exp(sim(z_k, z_j)/tau), averaged over the 2N anchors; sim = cosine.
    `positives` `[N, N]` bool (optional; diagonal True) marks further positive image pairs (McGIP): both views of a
    marked image are positives of the anchor, and the loss averages -log p over them (the multi-positive form of
    Khosla et al. 2020); with the identity it equals plain NT-Xent.
    """
    n = z_a.shape[0]
    z = l2_normalize(jnp.concatenate([z_a, z_b], axis=0))
    self_mask = jnp.eye(2 * n, dtype=bool)
    logits = jnp.where(self_mask, _NEG, z @ z.T / temperature)
    log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
    pairs = jnp.eye(n, dtype=bool) if positives is None else positives.astype(bool) | jnp.eye(n, dtype=bool)
    pos = jnp.tile(pairs, (2, 2)) & ~self_mask
    per_anchor = -jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.sum(pos, axis=1)
    return jnp.mean(per_anchor)


def gaze_similarity_positives(signatures: Array, has_gaze: Array, threshold: float) -> Array:
    """McGIP positives `[N, N]` bool: cosine similarity of the flattened gaze maps `signatures [N, ...]` above
    `threshold` (both images with gaze), plus the diagonal."""
    s = l2_normalize(signatures.reshape(signatures.shape[0], -1))
    both = has_gaze[:, None] & has_gaze[None, :]
    return ((s @ s.T > threshold) & both) | jnp.eye(s.shape[0], dtype=bool)


def byol_loss(p: Array, z_target: Array) -> Array:
    """BYOL (Grill et al. 2020, Eq. 2): mean over N of 2 - 2 cos(p, sg(z_target)); p, z_target `[N, D]`."""
    cos = jnp.sum(l2_normalize(p) * l2_normalize(jax.lax.stop_gradient(z_target)), axis=-1)
    return jnp.mean(2.0 - 2.0 * cos)


def moco_infonce(q: Array, k: Array, queue: Array, temperature: float) -> Array:
    """MoCo v2 InfoNCE (He et al. 2020, Eq. 1): -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_queue exp(q.k-/tau)).

    q `[N, D]` (online), k `[N, D]` (momentum encoder, gradient stopped), queue `[K, D]` of past keys (negatives).
    """
    q, k = l2_normalize(q), l2_normalize(jax.lax.stop_gradient(k))
    queue = l2_normalize(jax.lax.stop_gradient(queue))
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([pos, q @ queue.T], axis=1) / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def attention_distance(model_map: Array, gaze_map: Array, distance: str = "l2", mask: Array | None = None) -> Array:
    """D(A_m, A_g) of Sec. 2.3.3 per sample, averaged over `mask`; maps `[B, h, w]`, non-negative.

    "l2": ||a/||a|| - g/||g|| ||^2 on the flattened maps (attention transfer's normalised L2, squared, in [0, 2]).
    "kl": KL(Q || P) with Q = g / sum(g), P = a / sum(a) (gaze as the target distribution, eps-smoothed).
    Samples whose gaze map is all zero (no gaze) must be masked out.
    """
    b = model_map.shape[0]
    a, g = model_map.reshape(b, -1).astype(jnp.float32), gaze_map.reshape(b, -1).astype(jnp.float32)
    if distance == "l2":
        per = jnp.sum(jnp.square(l2_normalize(a) - l2_normalize(g)), axis=-1)
    elif distance == "kl":
        p = a / (jnp.sum(a, axis=-1, keepdims=True) + _EPS) + _EPS
        q = g / (jnp.sum(g, axis=-1, keepdims=True) + _EPS)
        per = jnp.sum(jax.scipy.special.xlogy(q, q + _EPS) - q * jnp.log(p), axis=-1)
    else:
        raise ValueError(f"losses_ssl.attention_distance: distance must be 'l2' or 'kl', got {distance!r}")
    return _masked_mean(per, mask)


def attention_transfer(model_maps: Mapping[str, Array], gaze_maps: Mapping[str, Array],
                       weights: Mapping[str, float], distance: str = "l2",
                       mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """L_attn = sum_l lambda_l D(A_m^l, A_g) (Sec. 2.3.3); maps by layer name, each `[B, h_l, w_l]` with the gaze
    map rendered at that layer's grid. Returns (L_attn, {layer: D_l})."""
    per_layer = {name: attention_distance(model_maps[name], gaze_maps[name], distance, mask) for name in weights}
    total = sum((float(w) * per_layer[name] for name, w in weights.items()), jnp.zeros((), jnp.float32))
    return total, per_layer


def region_pool(features: Array, region: Array) -> tuple[Array, Array]:
    """Mean of `features [B, h, w, D]` over the cells where `region [B, h, w]` is True: (`[B, D]`, non-empty `[B]`)."""
    w = region.astype(jnp.float32)[..., None]
    count = jnp.sum(w, axis=(1, 2))
    pooled = jnp.sum(features.astype(jnp.float32) * w, axis=(1, 2)) / jnp.maximum(count, 1.0)
    return pooled, count[:, 0] > 0


def regional_contrastive(feat_a: Array, feat_g: Array, att_a: Array, att_g: Array, high: float, low: float,
                         temperature: float, valid: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """L_regional (Sec. 2.3.3): the high-attention features of the two views of an image are positives, the
    low-attention features of the other images negatives.

    feat_a, feat_g `[B, h, w, D]` per-location projections of views a and g; att_a, att_g `[B, h, w]` their gaze
    attention in [0, 1] at that grid. Regions: high = A >= `high`, low = A <= `low`; r = mean feature over the region,
    L2-normalised. Anchor r_high(a, i) has positive r_high(g, i) and negatives r_low(a, j), r_low(g, j), j != i:
    -log exp(s+/tau) / (exp(s+/tau) + sum_j exp(s_j/tau)); symmetrised over the views (anchor r_high(g, i) with
    positive r_high(a, i)). `valid [B]` (e.g. has_gaze) gates both anchors and negatives; an anchor needs a high
    region in both views, a negative a non-empty low region. Returns (loss, {"regional_anchors": count}).
    """
    b = feat_a.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    high_a, ok_ha = region_pool(feat_a, att_a >= high)
    high_g, ok_hg = region_pool(feat_g, att_g >= high)
    low_a, ok_la = region_pool(feat_a, att_a <= low)
    low_g, ok_lg = region_pool(feat_g, att_g <= low)
    high_a, high_g, low_a, low_g = (l2_normalize(r) for r in (high_a, high_g, low_a, low_g))
    anchors = valid & ok_ha & ok_hg
    others = ~jnp.eye(b, dtype=bool)
    neg_ok = jnp.concatenate([others & (valid & ok_la)[None, :], others & (valid & ok_lg)[None, :]], axis=1)
    negatives = jnp.concatenate([low_a, low_g], axis=0)  # [2B, D]

    def one_direction(anchor: Array, positive: Array) -> Array:
        pos = jnp.sum(anchor * positive, axis=-1, keepdims=True) / temperature
        neg = jnp.where(neg_ok, anchor @ negatives.T / temperature, _NEG)
        return jax.nn.logsumexp(jnp.concatenate([pos, neg], axis=1), axis=1) - pos[:, 0]

    per = 0.5 * (one_direction(high_a, high_g) + one_direction(high_g, high_a))
    return _masked_mean(per, anchors), {"regional_anchors": jnp.sum(anchors.astype(jnp.float32))}
