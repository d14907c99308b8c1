"""`remat=True` (per-block rematerialisation) changes memory, not maths: same parameter tree, same outputs and
same gradients as the stored-activation model, for the 3D SAN+AAB segmenter (EquiUnet blocks) and the 2D backbones;
and the remat model really checkpoints its blocks.

Compile time is what these tests cost: parameters are random draws shaped by `jax.eval_shape` (no initialiser to
compile), gradients come from one jitted function per model compiled with most XLA optimisations off and rbg keys
(the `fast_compile` fixture; gradients are compared with a tolerance anyway)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gazejax import models
from gazejax.models.segmenter import GazeSegmenter
from gazejax.models.unet3d import EquiUnet
from tests.models.params import random_variables

# The standalone EquiUnet is not a numerical case: its remat blocks are the EquiUnetEncoder / EquiUnetDecoder that the
# segmenter runs (same classes, same `remat` switch); test_equiunet_passes_remat_to_its_blocks checks its wiring.
CASES = {
    "segmenter": (lambda remat: GazeSegmenter(method="ours", num_classes=3, width=2, in_channels=2, san_width=4,
                                              aab_heads=1, aab_head_dim=4, remat=remat), (1, 16, 16, 16, 2)),
    "resnet18": (lambda remat: models.build("resnet18", num_classes=3, width=4, remat=remat), (2, 32, 32, 3)),
    "efficientnet_b0": (lambda remat: models.build("efficientnet_b0", num_classes=3, width_mult=0.25,
                                                   depth_mult=0.25, stochastic_depth_prob=0.0, remat=remat),
                        (2, 64, 64, 3)),  # 2x2 last maps: train-mode BatchNorm over 2 values is ill-conditioned
}


def _first_output(out):
    return out["seg"] if "seg" in out else out["logits"]


def _grad_fn(model, variables, x):
    def loss(params):
        out = model.apply({**variables, "params": params}, x, train=True, mutable=list(set(variables) - {"params"}),
                          rngs={"dropout": jax.random.key(2)})
        return jnp.sum(_first_output(out[0]) ** 2)

    return jax.grad(loss)


def _remat_count(jaxpr) -> int:
    """How many rematerialised (checkpointed) calls a traced program makes."""
    return len(re.findall(r"\b(?:remat2?|checkpoint)\[", str(jaxpr)))


def _grads_and_remat_count(model, variables, x):
    """(gradients, number of checkpointed calls), traced once."""
    traced = jax.jit(_grad_fn(model, variables, x)).trace(variables["params"])
    return traced.lower().compile()(variables["params"]), _remat_count(traced.jaxpr)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_remat_matches_plain(name, fast_compile):
    build, shape = CASES[name]
    x = jax.random.normal(jax.random.key(1), shape)
    plain, remat = build(False), build(True)
    shapes = [jax.eval_shape(lambda k, m=m: m.init(k, x, train=False), jax.random.key(0)) for m in (plain, remat)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])  # shapes and dtypes
    variables = random_variables(shapes[0])

    (g_plain, n_plain), (g_remat, n_remat) = (_grads_and_remat_count(m, variables, x) for m in (plain, remat))
    assert n_plain == 0 and n_remat > 0  # two different programs: the remat one recomputes checkpointed blocks
    grads = [g_plain, g_remat]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-3, atol=1e-4)  # BatchNorm amplifies float noise
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[0]))


def test_equiunet_passes_remat_to_its_blocks(fast_compile):
    x = jnp.zeros((1, 8, 8, 8, 2))
    counts = []
    for remat in (False, True):
        model = EquiUnet(num_classes=3, width=2, in_channels=2, remat=remat, conv_impl="xla")  # lighter to trace
        variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
        counts.append(_remat_count(jax.make_jaxpr(_grad_fn(model, variables, x))(variables["params"])))
    assert counts[0] == 0 and counts[1] >= 8  # every encoder and decoder UBlock (4 levels down, 3 up + bottom)
