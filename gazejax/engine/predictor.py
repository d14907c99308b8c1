"""The inference function every evaluation and `gazejax.predict` share: `model.apply(train=False)` jitted once per
model, the batch padded to a multiple of the mesh's data axis and sharded over it (on a 2-D mesh, volumes also along
depth over `spatial`: training's `mesh.spatial`, `gazejax.predict --spatial`), outputs replicated (every process of a
multi-host run can read the whole prediction). One code path, so a model exported and applied to a
case gives the same numbers as the evaluation that selected it."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from gazejax.engine import parallel
from gazejax.models import conv_impl


def compiler_options(config) -> dict:
    """`jax.jit`'s options for every function tracing the model of `config` (`conv_impl.compiler_options` of
    `config.model.conv_impl`: XLA:CPU's oneDNN convolutions under "onednn")."""
    return conv_impl.compiler_options(str(config.model.get("conv_impl", "auto")))


def jitted_apply(model, mesh: Mesh, compiler_options: dict | None = None) -> Callable:
    """`(variables, *inputs) -> outputs` of `model` in inference mode, jitted with replicated outputs (compiled once
    per input shape: make it once per model and `bind` it to each set of weights). `compiler_options`: `jax.jit`'s,
    `conv_impl.compiler_options` of the model's conv_impl."""
    return parallel.on_mesh(jax.jit(lambda variables, *inputs: model.apply(variables, *inputs, train=False),
                                    out_shardings=parallel.replicated(mesh), compiler_options=compiler_options), mesh)


def bind(apply_fn: Callable, variables: Any, mesh: Mesh) -> Callable:
    """numpy inputs [B, ...] -> numpy outputs of `apply_fn` (from `jitted_apply`) with `variables`; B is padded
    (repeating the last row) to a multiple of the mesh's data axis and sharded over it (volumes also along depth
    over `spatial` on a 2-D mesh), the padding cut off."""
    n_dev = parallel.data_size(mesh)

    def predict(*inputs):
        b = inputs[0].shape[0]
        pad = (-b) % n_dev
        if pad:
            inputs = tuple(np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in inputs)
        placed = tuple(jax.device_put(x, parallel.leaf_sharding(mesh, x)) for x in inputs)
        out = apply_fn(variables, *placed)
        return jax.tree.map(lambda y: np.asarray(y)[:b] if getattr(y, "ndim", 0) else np.asarray(y), out)

    return predict
