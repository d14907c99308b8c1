"""Random variables for a model from its `jax.eval_shape(model.init, ...)` tree, without compiling an initialiser:
fan-in scaled kernels (activations stay finite through deep nets) and positive BatchNorm statistics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(shapes, seed: int = 0):
    rng = np.random.default_rng(seed)

    def draw(path, a):
        if "batch_stats" in jax.tree_util.keystr(path):
            return jnp.asarray(np.abs(rng.normal(0, 0.3, a.shape)) + 0.5, a.dtype)
        scale = 1 / np.sqrt(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 0.3
        return jnp.asarray(rng.normal(0, scale, a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
