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


def maybe_initialize_distributed(config: Any | None = None) -> bool:
    """Calls `jax.distributed.initialize()` when a multi-process run is configured; True if it did.

    Must run before anything touches a JAX device. Two ways to configure it:
    - explicit (local multi-process runs, `launch/local_multiprocess.sh`): `config.distributed.coordinator`
      ("host:port" of process 0), `num_processes`, `process_id`, or the GAZEJAX_COORDINATOR /
      GAZEJAX_NUM_PROCESSES / GAZEJAX_PROCESS_ID environment variables (the environment wins, so one config serves
      every process);
    - automatic (`config.distributed.auto=True` or GAZEJAX_DISTRIBUTED_AUTO=1): JAX reads the cluster's own
      environment: Cloud TPU pod metadata, SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_STEP_NODELIST, ...), Open MPI.
    GAZEJAX_LOCAL_DEVICE_IDS ("0,1,2,3") or `config.distributed.local_device_ids` pins this process's devices; on
    SLURM JAX otherwise gives each task only GPU SLURM_LOCALID, right for one task per GPU, so a one-task-per-node
    job must list the node's GPUs. A single-process run, or an already initialised one, does nothing.
    """
    dist = getattr(config, "distributed", None) if config is not None else None
    get = (lambda key, default: dist.get(key, default)) if dist is not None else (lambda key, default: default)
    coordinator = os.environ.get("GAZEJAX_COORDINATOR", "") or get("coordinator", "")
    num = int(os.environ.get("GAZEJAX_NUM_PROCESSES", "") or get("num_processes", 0) or 0)
    pid = int(os.environ.get("GAZEJAX_PROCESS_ID", "") or get("process_id", -1))
    auto = os.environ.get("GAZEJAX_DISTRIBUTED_AUTO", "").lower() in ("1", "true", "yes") or bool(get("auto", False))
    local_ids = os.environ.get("GAZEJAX_LOCAL_DEVICE_IDS", "") or str(get("local_device_ids", "") or "")
    devices = [int(i) for i in local_ids.split(",") if i.strip()] or None
    if jax.distributed.is_initialized() or not ((coordinator and num > 1) or auto):
        return False
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):  # CPU cross-process
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator and num > 1:
        if not 0 <= pid < num:
            raise ValueError(f"distributed: process_id must be in [0, {num}) for {num} processes, got {pid} "
                             f"(set GAZEJAX_PROCESS_ID or config.distributed.process_id)")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid,
                                   local_device_ids=devices)
    else:
        jax.distributed.initialize(local_device_ids=devices)
    return True


def is_primary() -> bool:
    """True on process 0, the one process that writes logs, reports and other shared files."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True if `flag` is True on any process (a collective: every process must call it at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op with one process)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int | None = None, devices: list | None = None, process_count: int | None = None) -> Mesh:
    """A 1-D `data` mesh over all (or the first `num_devices`) global devices (`devices`, `process_count`: JAX's
    own by default). Every process must own a device of the mesh: one without could hold no share of the state."""
    devices = list(jax.devices() if devices is None else devices)
    process_count = jax.process_count() if process_count is None else process_count
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"config.num_devices={num_devices}: only {len(devices)} devices are visible")
        devices = devices[:num_devices]
    left_out = sorted(set(range(process_count)) - {d.process_index for d in devices})
    if left_out:
        raise ValueError(f"config.num_devices={num_devices}: processes {left_out} of {process_count} own none of the "
                         f"mesh's {len(devices)} devices; use 0 (all devices) or a multiple of the devices per process")
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
