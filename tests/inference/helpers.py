"""Exports of untrained models (the export format without a training run) for the predict tests."""
from __future__ import annotations

import json

import jax

from gazejax import export, methods


def untrained_export(config, path: str, seed: int = 0) -> str:
    """Initialises `config`'s model with `seed` and writes it as an export folder of the last stage."""
    method = methods.get(config.method_family)
    model = method.build_model(config)
    init = jax.jit(lambda r, *x: model.init(r, *x, train=False))
    variables = init(jax.random.key(seed, impl="rbg"), *method.model_inputs(method.init_batch(config)))
    idx = len(method.stages(config)) - 1
    meta = export.model_meta(config, method, idx, 0, "untrained (test)", str(path))
    return export.write_model(path, variables, json.loads(config.to_json_best_effort()), meta)
