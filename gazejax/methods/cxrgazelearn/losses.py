"""CXRGazeLearn's stage-1 contrastive loss: a triplet margin loss on L2-normalised pooled embeddings with batch-all
or batch-hard mining over the classes of a batch (Qiu et al. Sec. III.A; Hoffer & Ailon 2015).

The other losses of the method live in `gazejax.losses`: `kl_saliency` (KL between the gaze map normalised to sum 1
and the softmax over the flattened saliency logits; stage 2, MT-UNet), `softmax_ce` (stages 1b and 3) and
`mtunet_weighting` (MT-UNet's CE / sigma_c^2 + log(sigma_c + 1) + KL / (2 sigma_i^2) + log(sigma_i + 1)).
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
MINING = ("all", "hard")


def pairwise_distances(embeddings: Array, normalize: bool = True) -> Array:
    """Euclidean distances `[B, B]` between the rows of `embeddings [B, D]` (L2-normalised first by default).

    The square root is taken of max(d^2, 1e-12), so the gradient stays finite at d = 0 (the diagonal).
    """
    e = embeddings.astype(jnp.float32)
    if normalize:
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    diff = e[:, None, :] - e[None, :, :]
    return jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, axis=-1), 1e-12))


def triplet_masks(labels: Array, valid: Array | None = None) -> tuple[Array, Array]:
    """(positive `[B, B]`, negative `[B, B]`) bool masks: same class and a != p / other class; both ends valid."""
    labels = jnp.asarray(labels)
    valid = jnp.ones(labels.shape, bool) if valid is None else jnp.asarray(valid, bool)
    both = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    positive = both & same & ~jnp.eye(labels.shape[0], dtype=bool)
    return positive, both & ~same


def triplet_loss(embeddings: Array, labels: Array, valid: Array | None = None, margin: float = 1.0,
                 mining: Literal["all", "hard"] = "all", normalize: bool = True) -> tuple[Array, Array]:
    """Triplet margin loss max(d(a, p) - d(a, n) + margin, 0) with d the L2 distance of normalised embeddings.

    Args:
      embeddings: `[B, D]` pooled features (normalised here unless `normalize=False`).
      labels: `[B]` int class of each sample; positives share the anchor's class, negatives have another one.
      valid: `[B]` bool; invalid / unknown labels take part in no triplet (None = all valid).
      margin: the margin (1.0, torch `TripletMarginLoss`'s default, as the reference code).
      mining: "all" = the mean over every valid triplet (a, p, n) of the batch; "hard" = per anchor the farthest
        positive and the nearest negative (Hermans et al. 2017), the mean over anchors that have both.
      normalize: L2-normalise the embeddings first (the issue's "pooled, L2-normalised embeddings").

    Returns:
      (loss, number of triplets or anchors used), float32 scalars; the loss is 0 when the batch has none.
    """
    if mining not in MINING:
        raise ValueError(f"cxrgazelearn triplet_loss: mining must be one of {MINING}, got {mining!r}")
    if embeddings.ndim != 2 or jnp.shape(labels) != embeddings.shape[:1]:
        raise ValueError(f"cxrgazelearn triplet_loss: expected embeddings [B, D] and labels [B], got "
                         f"{embeddings.shape} and {jnp.shape(labels)}")
    d = pairwise_distances(embeddings, normalize)
    positive, negative = triplet_masks(labels, valid)
    if mining == "all":
        terms = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)  # [a, p, n]
        use = positive[:, :, None] & negative[:, None, :]
    else:
        hardest_pos = jnp.max(jnp.where(positive, d, -jnp.inf), axis=1)
        hardest_neg = jnp.min(jnp.where(negative, d, jnp.inf), axis=1)
        use = positive.any(axis=1) & negative.any(axis=1)
        terms = jax.nn.relu(jnp.where(use, hardest_pos - hardest_neg, 0.0) + margin)
    count = jnp.sum(use).astype(jnp.float32)
    loss = jnp.sum(jnp.where(use, terms, 0.0)) / jnp.maximum(count, 1.0)
    return loss, count

