"""`remat=True` (per-block rematerialisation) changes memory, not maths: same parameter tree, same outputs and
same gradients as the stored-activation model, for the 3D EquiUnet / SAN+AAB segmenter and the 2D backbones."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax import models
from gazejax.models.segmenter import GazeSegmenter
from gazejax.models.unet3d import EquiUnet

CASES = {
    "equiunet": (lambda remat: EquiUnet(num_classes=3, width=2, in_channels=2, remat=remat), (1, 8, 8, 8, 2)),
    "segmenter": (lambda remat: GazeSegmenter(method="ours", num_classes=3, width=2, in_channels=2, san_width=4,
                                              aab_heads=1, aab_head_dim=4, remat=remat), (1, 16, 16, 16, 2)),
    "resnet18": (lambda remat: models.build("resnet18", num_classes=3, width=4, remat=remat), (2, 32, 32, 3)),
    "efficientnet_b0": (lambda remat: models.build("efficientnet_b0", num_classes=3, width_mult=0.25,
                                                   depth_mult=0.25, stochastic_depth_prob=0.0, remat=remat),
                        (2, 32, 32, 3)),
}


def _first_output(out):
    return out["seg"] if "seg" in out else out["logits"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_remat_matches_plain(name):
    build, shape = CASES[name]
    x = jax.random.normal(jax.random.key(1), shape)
    plain, remat = build(False), build(True)
    variables = plain.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(remat.init(jax.random.key(0), x, train=False))

    def loss(params, model):
        out = model.apply({**variables, "params": params}, x, train=True, mutable=list(set(variables) - {"params"}),
                          rngs={"dropout": jax.random.key(2)})
        return jnp.sum(_first_output(out[0]) ** 2)

    grads = [jax.grad(loss)(variables["params"], m) for m in (plain, remat)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3, atol=1e-4)  # BatchNorm amplifies float noise
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[0]))
