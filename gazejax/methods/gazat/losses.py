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


SIMILARITIES = ("dhash", "cosine")


def gaze_similarity(signatures: Array, kind: str = "dhash") -> Array:
    """McGIP's image-image gaze similarity `[N, N]` from un-augmented gaze maps `signatures [N, h, w]`.

    "dhash" (the authors' heat-map scheme, zhaozh10/McGIP core-code/GazeSimilarityEval/dhash.py): each map (their
    8 x 9) becomes h (w - 1) bits, 1 where a cell is greater than its right neighbour, and the similarity is the
    cosine of the bit vectors (0 for a map without any bit). "cosine": cosine of the flattened maps.
    """
    s = jnp.asarray(signatures, jnp.float32)
    if kind == "dhash":
        if s.ndim != 3:
            raise ValueError(f"losses_ssl.gaze_similarity: dhash needs maps [N, h, w], got shape {s.shape}")
        s = (s[:, :, :-1] > s[:, :, 1:]).astype(jnp.float32)
    elif kind != "cosine":
        raise ValueError(f"losses_ssl.gaze_similarity: kind must be one of {SIMILARITIES}, got {kind!r}")
    s = l2_normalize(s.reshape(s.shape[0], -1))
    return s @ s.T


def gaze_similarity_positives(signatures: Array, has_gaze: Array, threshold: float, kind: str = "dhash") -> Array:
    """McGIP positives `[N, N]` bool: `gaze_similarity` above `threshold` (both images with gaze), plus the
    diagonal (the authors' `_create_buffer`: sim > threshold)."""
    both = has_gaze[:, None] & has_gaze[None, :]
    return ((gaze_similarity(signatures, kind) > threshold) & both) | jnp.eye(signatures.shape[0], dtype=bool)


def byol_loss(p: Array, z_target: Array) -> Array:
    """BYOL (Grill et al. 2020, Eq. 2): mean over N of 2 - 2 cos(p, sg(z_target)); p, z_target `[N, D]`."""
    cos = jnp.sum(l2_normalize(p) * l2_normalize(jax.lax.stop_gradient(z_target)), axis=-1)
    return jnp.mean(2.0 - 2.0 * cos)


def moco_infonce(q: Array, k: Array, queue: Array, temperature: float, queue_ids: Array | None = None,
                 ids: Array | None = None) -> Array:
    """MoCo v2 InfoNCE (He et al. 2020, Eq. 1): -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_queue exp(q.k-/tau)).

    q `[N, D]` (online), k `[N, D]` (momentum encoder, gradient stopped), queue `[K, D]` of past keys (negatives).
    With `queue_ids [K]` and `ids [N]` (image indices), a queued key of the anchor's own image is no negative.
    """
    q, k = l2_normalize(q), l2_normalize(jax.lax.stop_gradient(k))
    queue = l2_normalize(jax.lax.stop_gradient(queue))
    pos = jnp.sum(q * k, axis=-1, keepdims=True)
    neg = q @ queue.T
    if queue_ids is not None and ids is not None:
        neg = jnp.where(queue_ids[None, :] == ids[:, None], _NEG, neg)
    logits = jnp.concatenate([pos, neg], axis=1) / temperature
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
        raise ValueError(f"gazat attention_distance: distance must be 'l2' or 'kl', got {distance!r}")
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


NEGATIVE_KINDS = ("low", "low+high")
NEGATIVE_VIEWS = ("a", "ag")


def _pairs_mean(sim: Array, ok: Array) -> Array:
    """Mean of `sim [B, B]` over the off-diagonal pairs where `ok [B, B]` (0 without one)."""
    ok = ok & ~jnp.eye(sim.shape[0], dtype=bool)
    return jnp.sum(jnp.where(ok, sim, 0.0)) / jnp.maximum(jnp.sum(ok), 1.0)


def regional_contrastive(feat_a: Array, feat_g: Array, att_a: Array, att_g: Array, high: float, low: float,
                         temperature: float, valid: Array | None = None, negatives: str = "low+high",
                         negative_views: str = "a") -> tuple[Array, dict[str, Array]]:
    """L_regional (Sec. 2.3.3): the high-attention features of the two views of an image are positives, region
    features of the other images negatives.

    feat_a, feat_g `[B, h, w, D]` per-location projections of views a (standard, un-blended) and g (gaze-blended);
    att_a, att_g `[B, h, w]` their gaze attention in [0, 1] at that grid. Regions: high = A >= `high`, low = A <=
    `low`; r = mean feature over the region, L2-normalised. Anchor r_high(a, i) has positive r_high(g, i) (and
    symmetrically anchor r_high(g, i) positive r_high(a, i)); -log exp(s+/tau) / (exp(s+/tau) + sum_n exp(s_n/tau)).
    Negatives, over the other images j != i: `negatives` "low" = r_low(j) (the paper's r_low^j), "low+high" = also
    r_high(j), so mapping every high region to one vector and every low region to another (a two-vector solution)
    no longer minimises the loss; `negative_views` "a" = from the un-blended view only (in view g the low-gaze
    pixels are the strongly augmented ones, a visible mark of the gaze map), "ag" = from both views (the earlier
    form, with negatives "low"). `valid [B]` (e.g. has_gaze) gates anchors and negatives; an anchor needs a high
    region in both views, a negative a non-empty region. Returns (loss, stats): "regional_anchors" (count) and the
    collapse diagnostics "regional_pos_cos" (anchor-positive cosine), "regional_high_cos" (mean cosine of different
    images' r_high in view a: 1 = every image's high region is one vector) and "regional_high_low_cos" (r_high(i)
    vs r_low(j), view a).
    """
    if negatives not in NEGATIVE_KINDS or negative_views not in NEGATIVE_VIEWS:
        raise ValueError(f"losses_ssl.regional_contrastive: negatives must be one of {NEGATIVE_KINDS} and "
                         f"negative_views one of {NEGATIVE_VIEWS}, got {negatives!r}, {negative_views!r}")
    b = feat_a.shape[0]
    valid = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    pooled = {(v, r): region_pool(f, cmp) for v, f, a in (("a", feat_a, att_a), ("g", feat_g, att_g))
              for r, cmp in (("high", a >= high), ("low", a <= low))}
    feats = {key: l2_normalize(p) for key, (p, _) in pooled.items()}
    ok = {key: valid & nonempty for key, (_, nonempty) in pooled.items()}
    anchors = ok[("a", "high")] & ok[("g", "high")]
    others = ~jnp.eye(b, dtype=bool)
    keys = [(v, r) for v in negative_views for r in ("low", "high") if r in negatives.split("+")]
    neg_ok = jnp.concatenate([others & ok[key][None, :] for key in keys], axis=1)  # [B, len(keys) B]
    negs = jnp.concatenate([feats[key] for key in keys], axis=0)

    def one_direction(anchor: Array, positive: Array) -> Array:
        pos = jnp.sum(anchor * positive, axis=-1, keepdims=True) / temperature
        neg = jnp.where(neg_ok, anchor @ negs.T / temperature, _NEG)
        return jax.nn.logsumexp(jnp.concatenate([pos, neg], axis=1), axis=1) - pos[:, 0]

    high_a, high_g, low_a = feats[("a", "high")], feats[("g", "high")], feats[("a", "low")]
    per = 0.5 * (one_direction(high_a, high_g) + one_direction(high_g, high_a))
    both_high = ok[("a", "high")][:, None] & ok[("a", "high")][None, :]
    stats = {"regional_anchors": jnp.sum(anchors.astype(jnp.float32)),
             "regional_pos_cos": _masked_mean(jnp.sum(high_a * high_g, axis=-1), anchors),
             "regional_high_cos": _pairs_mean(high_a @ high_a.T, both_high),
             "regional_high_low_cos": _pairs_mean(high_a @ low_a.T,
                                                  ok[("a", "high")][:, None] & ok[("a", "low")][None, :])}
    return _masked_mean(per, anchors), stats
