"""Grad-CAM (Selvaraju et al., ICCV 2017) in JAX: class-discriminative maps from the gradients of a class score
with respect to a feature map, for any Flax module output or any pure head function.

Grad-CAM^c = ReLU(sum_k alpha_k^c A^k) with alpha_k^c = mean over (i, j) of d y^c / d A^k_ij (Eqs. 1-2, Selvaraju
et al.), at the feature map's grid `[B, h, w]`. For a head that is GAP + linear, alpha_k^c = W_kc / (h w), so
Grad-CAM is ReLU(CAM^c) / (h w) (the CAM of Zhou et al.). Samples are independent (eval-mode models), so the
gradient of the batch sum of scores gives every sample's own gradient.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _combine(feature_map: jax.Array, grads: jax.Array) -> jax.Array:
    """ReLU(sum_k mean_ij(grads_k) A_k): `[B, h, w, C]` x2 -> `[B, h, w]` (Eqs. 1-2, Selvaraju et al.)."""
    alpha = jnp.mean(grads, axis=(1, 2), keepdims=True)
    return nn.relu(jnp.sum(alpha * feature_map, axis=-1))


def grad_cam_from_head(feature_map: jax.Array, head_fn: Callable[[jax.Array], jax.Array],
                       class_index: jax.Array | None = None) -> jax.Array:
    """Grad-CAM of `head_fn` (a pure function `[B, h, w, C] -> scores [B, K]`) at `feature_map [B, h, w, C]`.

    Returns `[B, h, w, K]` (every class) when `class_index` is None, else `[B, h, w]` for the class of each sample
    (`class_index [B]` ints). Usable inside a Flax module (the head's parameters closed over as arrays).
    """
    if feature_map.ndim != 4:
        raise ValueError(f"gradcam.py: feature map must be [B, h, w, C], got shape {feature_map.shape}")
    scores, vjp = jax.vjp(head_fn, feature_map)
    if scores.ndim != 2 or scores.shape[0] != feature_map.shape[0]:
        raise ValueError(f"gradcam.py: head_fn must return scores [B, K], got shape {scores.shape}")
    if class_index is not None:
        onehot = jax.nn.one_hot(class_index, scores.shape[1], dtype=scores.dtype)
        return _combine(feature_map, vjp(onehot)[0])
    eye = jnp.eye(scores.shape[1], dtype=scores.dtype)
    grads = jax.vmap(lambda row: vjp(jnp.broadcast_to(row, scores.shape))[0])(eye)  # [K, B, h, w, C]
    return jnp.moveaxis(jax.vmap(lambda g: _combine(feature_map, g))(grads), 0, -1)


def _path(layer: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(p for p in layer.split("/") if p) if isinstance(layer, str) else tuple(layer)


def grad_cam(model: nn.Module, variables: Any, inputs: Sequence[jax.Array], layer: str | Sequence[str],
             class_index: jax.Array | None = None, output_key: str = "logits", **apply_kwargs) -> jax.Array:
    """Grad-CAM `[B, h, w]` of `model` at the output of its submodule `layer` (a "/"-joined module path such as
    "features/transition3", or a tuple of names), for the scores `model.apply(...)[output_key]` `[B, K]`.

    `class_index [B]`: the class per sample (None = each sample's arg-max score). The submodule's output must be
    one array `[B, h, w, C]` (the module is called once). A zero perturbation is added to that output through a
    Flax method interceptor, and the score's gradient with respect to it is d y / d A. `apply_kwargs` go to
    `model.apply` (default `train=False`).
    """
    path, apply_kwargs = _path(layer), {"train": False, **apply_kwargs}

    def run(delta):
        seen = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path == path:
                if not isinstance(out, jax.Array) or out.ndim != 4:
                    raise ValueError(f"gradcam.py: layer {'/'.join(path)!r} must return one [B, h, w, C] array")
                out = out + (jnp.zeros_like(out) if delta is None else delta)
                seen["map"] = out
            return out

        with nn.intercept_methods(interceptor):
            outputs = model.apply(variables, *inputs, **apply_kwargs)
        if "map" not in seen:
            raise ValueError(f"gradcam.py: no submodule at {'/'.join(path)!r} was called by the model")
        return outputs[output_key], seen["map"]

    scores, feature_map = run(None)
    target = jnp.argmax(scores, axis=-1) if class_index is None else jnp.asarray(class_index)
    onehot = jax.nn.one_hot(target, scores.shape[-1], dtype=scores.dtype)
    grads = jax.grad(lambda d: jnp.sum(run(d)[0] * onehot))(jnp.zeros_like(feature_map))
    return _combine(feature_map, grads)
