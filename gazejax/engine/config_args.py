"""Shared config pieces: the `configs/x.py:key=val,...` argument parser and the engine fields every config has."""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> dict:
    """Parses "k=v,k=v" into a dict over `defaults` (unknown keys are an error, so typos do not pass silently)."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
        out[key] = value
    return out


def add_engine_fields(c: ml_collections.ConfigDict) -> None:
    """Checkpointing, mesh, multi-process and profiling fields the trainer reads; identical for every method."""
    if "track_test" not in c:
        c.track_test = False                # also evaluate the test split at every validation (logged as test/*)
    if "data" in c and "source" not in c.data:
        c.data.source = "files"             # files = the data set's own folders | tfds = array_record via tfds
        c.data.tfds_dir = ""                # TFDS data_dir; "" = <cache>/tfds, built from data.root on first use
    if "data" in c and "num_workers" not in c.data:
        c.data.num_workers = 0              # Grain worker processes for the training pipeline; 0 = in-process threads
    if "model" in c and "dtype" in c.model and "dtype" not in c:
        c.dtype = c.model.get_ref("dtype")  # compute dtype, one value: --config.dtype=bfloat16 sets model.dtype too
    if "remat" not in c:
        c.remat = False                     # per-block rematerialisation (EquiUnet, ResNet, EfficientNet blocks)
    if "grad_accum_steps" not in c:
        c.grad_accum_steps = 1              # micro-batches per optimiser step (same update, 1/k activation memory)
    if "mesh" not in c:
        c.mesh = ml_collections.ConfigDict()
        c.mesh.spatial = 1                  # devices per volume: 3D inputs split along depth over a `spatial` mesh
                                            # axis of this size, the rest of the devices on `data` (1 = data only)
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 2                   # last N checkpoints (plus the best of each stage)
    c.checkpoint.every_steps = 0            # 0 = at every validation
    c.checkpoint.async_save = True
    c.distributed = ml_collections.ConfigDict()
    c.distributed.auto = False              # jax.distributed.initialize() with auto-detection (TPU pod, SLURM)
    c.distributed.coordinator = ""          # host:port of process 0 for a local multi-process run
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.profile = ml_collections.ConfigDict()
    c.profile.enabled = False               # jax.profiler trace of a window of steps
    c.profile.start_step = 5
    c.profile.num_steps = 3
