"""Starting a model from a converted checkpoint (`config.model.init_from`): matching subtrees are copied in.

The file layout is the one `python -m gazejax.models.convert` writes: an Orbax PyTree checkpoint of Flax
variables at `<DIR>/variables`. A backbone checkpoint can initialise a composite model whose parameter tree
contains the backbone's tree at its root (e.g. EquiUnet's encoder/decoder inside GazeSegmenter).
"""
from __future__ import annotations

import logging
import os


import flax
import numpy as np

log = logging.getLogger("gazejax")


def read_variables(path: str) -> dict:
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    target = os.path.join(path, "variables") if os.path.isdir(os.path.join(path, "variables")) else path
    if not os.path.exists(target):
        raise FileNotFoundError(f"{path}: no converted checkpoint here (expected {target})")
    return ocp.PyTreeCheckpointer().restore(target)


def merge(variables: dict, loaded: dict, source: str = "") -> tuple[dict, int, list[str]]:
    """Copies every leaf of `loaded` whose path and shape exist in `variables`; returns (merged, n_copied,
    mismatches). Shape mismatches are errors: silently skipping them hides a wrong architecture."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
    new = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
    copied, missing = 0, []
    for key, value in new.items():
        if key not in flat:
            missing.append(key)
            continue
        if tuple(np.shape(value)) != tuple(np.shape(flat[key])):
            raise ValueError(f"{source}: {key} has shape {np.shape(value)} but the model expects "
                             f"{np.shape(flat[key])}")
        flat[key] = np.asarray(value, dtype=np.asarray(flat[key]).dtype)
        copied += 1
    return flax.traverse_util.unflatten_dict(flat, sep="/"), copied, missing


def load_pretrained_into(variables: dict, path: str) -> dict:
    merged, copied, missing = merge(variables, read_variables(path), source=path)
    if copied == 0:
        raise ValueError(f"{path}: no parameter of the checkpoint matches the model (first keys: {missing[:3]})")
    log.info("init_from %s: copied %d arrays, %d not in the model", path, copied, len(missing))
    return merged
