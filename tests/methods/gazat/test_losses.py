"""gazejax.methods.gazat.losses against hand-computed values and independent numpy loops: NT-Xent on a 2x2 case, McGIP's
multi-positive form, BYOL, MoCo v2, attention transfer (L2 / KL) and the regional contrastive loss's regions."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import entropy

from gazejax.methods.gazat import losses as L


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_nt_xent_equals_the_hand_computed_2x2_case():
    # a1 = (1, 0), a2 = (0, 1); b1 = (1, 1)/sqrt2, b2 = (0, 1). Cosines: a1.b1 = a2.b1 = b1.b2 = 1/sqrt2,
    # a2.b2 = 1, a1.a2 = a1.b2 = 0. tau = 0.5, so s/tau is sqrt2 for 1/sqrt2 and 2 for 1.
    za, zb = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[3.0, 3.0], [0.0, 2.0]])  # scale must not matter
    r2 = math.sqrt(2)
    loss_a1 = -math.log(math.exp(r2) / (math.exp(r2) + 1 + 1))           # pos b1; others a2, b2
    loss_a2 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(r2)))  # pos b2; others a1, b1
    loss_b1 = -math.log(math.exp(r2) / (3 * math.exp(r2)))              # pos a1; others a2, b2
    loss_b2 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(r2)))  # pos a2; others a1, b1
    expected = (loss_a1 + loss_a2 + loss_b1 + loss_b2) / 4
    assert float(L.nt_xent(za, zb, 0.5)) == pytest.approx(expected, rel=1e-6)
    assert float(L.nt_xent(za, zb, 0.5, positives=jnp.eye(2, dtype=bool))) == pytest.approx(expected, rel=1e-6)


def _multi_positive_reference(za, zb, tau, positives):
    z = _unit(np.concatenate([za, zb]))
    n = len(za)
    s = z @ z.T / tau
    total = []
    for k in range(2 * n):
        others = [j for j in range(2 * n) if j != k]
        log_den = logsumexp(s[k, others])
        pos = [j for j in others if positives[k % n, j % n] or j % n == k % n]
        total.append(-np.mean([s[k, j] - log_den for j in pos]))
    return np.mean(total)


def test_mcgip_positives_follow_gaze_similarity_and_the_multi_positive_loss():
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    sig = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]], np.float32)
    has = np.array([True, True, True, False])
    pos = np.asarray(L.gaze_similarity_positives(jnp.asarray(sig), jnp.asarray(has), 0.8, "cosine"))
    want = np.eye(4, dtype=bool)
    want[0, 1] = want[1, 0] = True  # cos = 0.994; images 2 and 3 are identical but 3 has no gaze
    np.testing.assert_array_equal(pos, want)
    got = float(L.nt_xent(jnp.asarray(za), jnp.asarray(zb), 0.3, jnp.asarray(pos)))
    assert got == pytest.approx(_multi_positive_reference(za, zb, 0.3, pos), rel=1e-5)
    assert got != pytest.approx(float(L.nt_xent(jnp.asarray(za), jnp.asarray(zb), 0.3)), rel=1e-3)


def test_byol_loss_values_and_stop_gradient():
    z = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    assert float(L.byol_loss(3 * z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.byol_loss(-z, z)) == pytest.approx(4.0, abs=1e-6)
    assert float(L.byol_loss(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]]))) == pytest.approx(2.0, abs=1e-6)
    grad_target = jax.grad(lambda t: L.byol_loss(z, t))(z + 1)
    assert float(jnp.abs(grad_target).max()) == 0.0


def test_moco_infonce_matches_a_numpy_loop():
    rng = np.random.default_rng(1)
    q, k, queue = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    qn, kn, un = _unit(q), _unit(k), _unit(queue)
    want = np.mean([-(qn[i] @ kn[i] / 0.2) + logsumexp(np.concatenate([[qn[i] @ kn[i]], un @ qn[i]]) / 0.2)
                    for i in range(3)])
    assert float(L.moco_infonce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2)) == pytest.approx(
        want, rel=1e-5)


def test_activation_attention_and_attention_distances():
    f = jnp.arange(2 * 2 * 3 * 4, dtype=jnp.float32).reshape(2, 2, 3, 4) - 10.0
    np.testing.assert_allclose(L.activation_attention(f), np.mean(np.asarray(f) ** 2, axis=-1), rtol=1e-6)
    a = jnp.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]])
    g = jnp.array([[[0.0, 1.0], [0.0, 0.0]], [[2.0, 4.0], [6.0, 8.0]]])
    # disjoint one-hot maps: ||e1 - e2||^2 = 2; proportional maps: 0; masking keeps the first sample only
    assert float(L.attention_distance(a, g, "l2")) == pytest.approx(1.0, abs=1e-6)
    assert float(L.attention_distance(a, g, "l2", jnp.array([True, False]))) == pytest.approx(2.0, abs=1e-6)
    m, t = jnp.array([[[1.0, 2.0], [3.0, 4.0]]]), jnp.array([[[0.5, 0.1], [0.3, 0.1]]])
    want = entropy(np.ravel(t) / np.sum(t), np.ravel(m) / np.sum(m))  # KL(Q || P)
    assert float(L.attention_distance(m, t, "kl")) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="distance"):
        L.attention_distance(m, t, "cosine")
    total, per = L.attention_transfer({"x": a, "y": m.repeat(2, 0)}, {"x": g, "y": t.repeat(2, 0)},
                                      {"x": 0.25, "y": 2.0}, "l2")
    assert float(total) == pytest.approx(0.25 * float(per["x"]) + 2.0 * float(per["y"]), rel=1e-6)


def _regional_reference(fa, fg, aa, ag, high, low, tau, valid, kinds=("low",), views="ag"):
    """Independent loop: region means from the thresholds, then the Sec. 2.3.3 loss per anchor, symmetrised;
    negatives: the `kinds` regions of the other valid images in `views`."""
    b = len(fa)

    def pool(f, m):
        return _unit(f[m].mean(0)) if m.any() else None

    hi_a = [pool(fa[i], aa[i] >= high) for i in range(b)]
    hi_g = [pool(fg[i], ag[i] >= high) for i in range(b)]
    fv, av = {"a": fa, "g": fg}, {"a": aa, "g": ag}
    region = {"low": lambda a: a <= low, "high": lambda a: a >= high}
    lo = {i: [r for v in views for k in kinds for r in [pool(fv[v][i], region[k](av[v][i]))] if r is not None]
          for i in range(b) if valid[i]}
    losses = []
    for i in range(b):
        if not valid[i] or hi_a[i] is None or hi_g[i] is None:
            continue
        negs = [r for j, rs in lo.items() if j != i for r in rs]
        per = []
        for anchor, positive in ((hi_a[i], hi_g[i]), (hi_g[i], hi_a[i])):
            logits = np.array([anchor @ positive] + [anchor @ r for r in negs]) / tau
            per.append(logsumexp(logits) - logits[0])
        losses.append(np.mean(per))
    return np.mean(losses), len(losses)


def test_regional_loss_takes_positives_and_negatives_from_the_threshold_regions():
    rng = np.random.default_rng(2)
    b, h, w, d = 4, 3, 3, 5
    fa, fg = rng.normal(size=(b, h, w, d)), rng.normal(size=(b, h, w, d))
    levels = np.array([0.9, 0.5, 0.05])  # high, neither, low for thresholds (0.7, 0.1)
    aa, ag = levels[rng.integers(0, 3, (b, h, w))], levels[rng.integers(0, 3, (b, h, w))]
    aa[0, 0, 0] = ag[0, 0, 0] = aa[1, 1, 1] = ag[1, 1, 1] = 0.9  # at least two anchors
    ag[2] = 0.5  # image 2: no high region in view g -> no anchor; no low region in view g
    valid = np.array([True, True, True, False])  # image 3 (no gaze): neither anchor nor negative
    args = (0.7, 0.1, 0.3)
    old = dict(negatives="low", negative_views="ag")  # the earlier form (ablation row "blended_targets")
    got, stats = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa, fg, aa, ag)), *args,
                                        valid=jnp.asarray(valid), **old)
    want, anchors = _regional_reference(fa, fg, aa, ag, *args, valid)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(stats["regional_anchors"]) == anchors
    for kinds, views in ((("low",), "a"), (("low", "high"), "a"), (("low", "high"), "ag")):
        new, _ = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa, fg, aa, ag)), *args,
                                        valid=jnp.asarray(valid), negatives="+".join(kinds), negative_views=views)
        assert float(new) == pytest.approx(_regional_reference(fa, fg, aa, ag, *args, valid, kinds, views)[0],
                                           rel=1e-5), (kinds, views)
    # features where 0.1 < A < 0.7, and every feature of the gaze-less image, are in no region: no effect
    fa2, fg2 = fa.copy(), fg.copy()
    fa2[aa == 0.5] += 10 * rng.normal(size=(int((aa == 0.5).sum()), d))
    fg2[3] = rng.normal(size=(h, w, d))
    again, _ = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa2, fg2, aa, ag)), *args,
                                      valid=jnp.asarray(valid), **old)
    assert float(again) == pytest.approx(float(got), rel=1e-5)
    # a low-attention feature of another image is a negative: moving it changes the loss
    fa3 = fa.copy()
    fa3[1][aa[1] <= 0.1] += 5.0
    moved, _ = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa3, fg, aa, ag)), *args,
                                      valid=jnp.asarray(valid), **old)
    assert abs(float(moved) - float(got)) > 1e-3


def test_moco_masks_queued_keys_of_the_anchors_own_image():
    rng = np.random.default_rng(3)
    q, k, queue = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
    ids, queue_ids = np.array([7, 2, 5]), np.array([2, 7, -1, 7, 9, 5])
    qn, kn, un = _unit(q), _unit(k), _unit(queue)
    want = np.mean([-(qn[i] @ kn[i] / 0.2) + logsumexp(np.concatenate(
        [[qn[i] @ kn[i]], [un[j] @ qn[i] for j in range(6) if queue_ids[j] != ids[i]]]) / 0.2) for i in range(3)])
    got = L.moco_infonce(*(jnp.asarray(x) for x in (q, k, queue)), 0.2, jnp.asarray(queue_ids), jnp.asarray(ids))
    assert float(got) == pytest.approx(want, rel=1e-5)
    unmasked = L.moco_infonce(*(jnp.asarray(x) for x in (q, k, queue)), 0.2)
    assert float(unmasked) > float(got) + 1e-3  # the same-image keys were negatives before


def test_mcgip_dhash_similarity_is_the_cosine_of_difference_hash_bits():
    maps = np.array([[[3, 2, 1], [1, 2, 3]],       # bits (row-wise "left > right"): 1 1 0 0
                     [[3, 1, 2], [0, 0, 5]],       # 1 0 0 0
                     [[1, 1, 1], [1, 1, 1]],       # 0 0 0 0 (flat: similarity 0 with anything)
                     [[1, 2, 3], [3, 2, 1]]], np.float32)  # 0 0 1 1
    bits = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], np.float64)
    norms = np.maximum(np.linalg.norm(bits, axis=1, keepdims=True), 1e-12)
    want = (bits / norms) @ (bits / norms).T
    np.testing.assert_allclose(np.asarray(L.gaze_similarity(jnp.asarray(maps), "dhash")), want, atol=1e-6)
    pos = np.asarray(L.gaze_similarity_positives(jnp.asarray(maps), jnp.ones(4, bool), 0.7, "dhash"))
    expected = np.eye(4, dtype=bool)
    expected[0, 1] = expected[1, 0] = True  # cos = 1 / sqrt(2) = 0.707 > 0.7
    np.testing.assert_array_equal(pos, expected)
    with pytest.raises(ValueError, match="kind"):
        L.gaze_similarity(jnp.asarray(maps), "hamming")


def test_regional_negatives_defeat_the_two_vector_solution_and_the_diagnostics_show_it():
    # every high-gaze region maps to u and every low-gaze region to -u, in both views: a trivial solution
    b, tau = 4, 0.5
    u = np.array([1.0, 0.0, 0.0])
    att = np.zeros((b, 2, 2))
    att[:, 0, :] = 0.9  # top row high, bottom row low
    feat = np.where((att >= 0.5)[..., None], u, -u)
    args = [jnp.asarray(x, jnp.float32) for x in (feat, feat, att, att)] + [0.5, 0.1, tau]
    old, _ = L.regional_contrastive(*args, negatives="low", negative_views="ag")
    new, stats = L.regional_contrastive(*args, negatives="low+high", negative_views="a")
    # low negatives only: pos 1/tau against 2(B-1) negatives at -1/tau; with high negatives: (B-1) at +1/tau too
    assert float(old) == pytest.approx(math.log(1 + 2 * (b - 1) * math.exp(-2 / tau)), rel=1e-5)
    assert float(new) == pytest.approx(math.log(b + (b - 1) * math.exp(-2 / tau)), rel=1e-5)
    assert float(stats["regional_high_cos"]) == pytest.approx(1.0, abs=1e-6)  # collapse diagnostic
    assert float(stats["regional_high_low_cos"]) == pytest.approx(-1.0, abs=1e-6)
    assert float(stats["regional_pos_cos"]) == pytest.approx(1.0, abs=1e-6)
    spread = np.random.default_rng(4).normal(size=(b, 2, 2, 3))
    _, healthy = L.regional_contrastive(*[jnp.asarray(x, jnp.float32) for x in (spread, spread, att, att)],
                                        0.5, 0.1, tau)
    assert float(healthy["regional_high_cos"]) < 0.9


def test_regional_negatives_come_from_the_unblended_view():
    rng = np.random.default_rng(5)
    b = 3
    fa, fg = rng.normal(size=(b, 2, 2, 4)), rng.normal(size=(b, 2, 2, 4))
    att = np.zeros((b, 2, 2))
    att[:, 0, :] = 0.9
    moved = fg.copy()
    moved[:, 1] += 3.0  # view g's low-gaze features (its strongly augmented pixels)
    for views, changes in (("a", False), ("ag", True)):
        base, _ = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa, fg, att, att)), 0.5, 0.1,
                                         0.3, negative_views=views)
        other, _ = L.regional_contrastive(*(jnp.asarray(x, jnp.float32) for x in (fa, moved, att, att)), 0.5, 0.1,
                                          0.3, negative_views=views)
        assert (abs(float(base) - float(other)) > 1e-4) == changes, views
