"""The exported model folder (`python -m gazejax.export`): one stage's selected weights, the resolved config, the
preprocessing spec and a model card, readable without the training data or the run's workdir.

  MODEL_DIR/
    model.json     format, method family / method / preset, stage and checkpoint step, preprocessing spec, output
                   names, package versions, the run's test metrics and split sizes
    config.json    the run's resolved config (what `--mode=evaluate --model` and `gazejax.predict` build the model from)
    weights/       Orbax PyTree checkpoint of the model variables {"params": ..., <collections>: ...}
    MODEL_CARD.md  the same facts for people

A folder is written under a temporary name and renamed into place, so a reader never sees half an export, and an
existing export is replaced only with `overwrite` (the old one is removed after the new one is in place).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np

FORMAT = "gazejax-model/1"
FILES = ("model.json", "config.json", "weights")


class ModelDirError(ValueError):
    """A folder that is not a readable gazejax export."""


def write(out_dir: str, variables: Any, config_json: str, meta: dict, card: str, overwrite: bool = False) -> str:
    """Writes the export folder `out_dir` (module docstring); returns its absolute path."""
    import orbax.checkpoint as ocp

    from gazejax.data import io

    from gazejax.engine.checkpoint import check_path

    out_dir = os.path.abspath(out_dir)
    check_path(out_dir, "the model folder")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists and is not empty; choose another --out or pass --overwrite")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(tmp, "weights"), jax.device_get(variables))
        io.write_text(os.path.join(tmp, "config.json"), config_json)
        io.write_json(os.path.join(tmp, "model.json"), dict(meta, format=FORMAT))
        io.write_text(os.path.join(tmp, "MODEL_CARD.md"), card)
        old = None
        if os.path.exists(out_dir):
            old = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_meta(model_dir: str) -> dict:
    """model.json of an export (checked: the folder holds every part and a known format)."""
    from gazejax.engine.checkpoint import check_path

    model_dir = os.path.abspath(model_dir)
    check_path(model_dir, "the model folder")
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"{model_dir}: no such model folder (write one with python -m gazejax.export)")
    missing = [f for f in FILES if not os.path.exists(os.path.join(model_dir, f))]
    if missing:
        raise ModelDirError(f"{model_dir}: not a gazejax model folder (missing {', '.join(missing)})")
    try:
        with open(os.path.join(model_dir, "model.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{model_dir}/model.json: unreadable ({' '.join(str(e).split())})") from None
    if meta.get("format") != FORMAT:
        raise ModelDirError(f"{model_dir}/model.json: format {meta.get('format')!r}, this gazejax reads {FORMAT!r}")
    return meta


def ml_config(values: dict):
    """A config.json's dict as the ml_collections ConfigDict the methods read."""
    import ml_collections

    return ml_collections.ConfigDict(values)


def read_config(model_dir: str):
    """The export's resolved config as an ml_collections ConfigDict."""
    path = os.path.join(os.path.abspath(model_dir), "config.json")
    try:
        with open(path) as f:
            return ml_config(json.load(f))
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path}: unreadable ({' '.join(str(e).split())})") from None


def read_variables(model_dir: str) -> dict:
    """The model variables {"params": ..., <collections>: ...} as numpy arrays."""
    import orbax.checkpoint as ocp

    path = os.path.join(os.path.abspath(model_dir), "weights")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            variables = ckpt.restore(path)
    except Exception as e:  # noqa: BLE001 - TensorStore / Orbax errors of a damaged folder alike
        raise ModelDirError(f"{path}: unreadable weights ({' '.join(str(e).split())[:200]})") from None
    return jax.tree.map(np.asarray, variables)


def read(model_dir: str) -> tuple[Any, dict, dict]:
    """(config, meta, variables) of an export."""
    meta = read_meta(model_dir)
    return read_config(model_dir), meta, read_variables(model_dir)
