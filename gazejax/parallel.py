"""Device mesh, shardings and host-local -> global arrays for data-parallel training.

Parameters are replicated and the batch is sharded over the `data` axis of a 1-D mesh spanning every device of
every process (after `jax.distributed.initialize()`), which is the jit + NamedSharding form of pmap-style data
parallelism: one program, no per-device Python loops.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(config: Any | None = None) -> None:
    """Calls `jax.distributed.initialize()` when a multi-process run is configured.

    TPU pods and SLURM are detected by JAX itself (`config.distributed.auto=True`); local multi-process runs pass a
    coordinator address, process count and id through the config or the GAZEJAX_COORDINATOR / GAZEJAX_NUM_PROCESSES /
    GAZEJAX_PROCESS_ID environment variables. A single-process run does nothing.
    """
    dist = getattr(config, "distributed", None) if config is not None else None
    coordinator = (dist.get("coordinator", "") if dist else "") or os.environ.get("GAZEJAX_COORDINATOR", "")
    num = int((dist.get("num_processes", 0) if dist else 0) or os.environ.get("GAZEJAX_NUM_PROCESSES", 0))
    pid = (dist.get("process_id", -1) if dist else -1)
    pid = int(os.environ.get("GAZEJAX_PROCESS_ID", pid))
    auto = bool(dist.get("auto", False)) if dist else False
    if coordinator and num > 1:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    elif auto:
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D `data` mesh over all (or the first `num_devices`) global devices."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices but only {len(devices)} are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process share of the global batch; the global batch must divide evenly over devices."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(f"global batch size {global_batch} is not divisible by the {n_dev} devices of the mesh")
    return global_batch // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> globally sharded jax arrays."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree replicated on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
