"""Device mesh, shardings and host-local -> global arrays for data-parallel and spatially partitioned training.

Parameters are replicated and the batch is sharded over the `data` axis of a mesh spanning every device of every
process (after `jax.distributed.initialize()`), which is the jit + NamedSharding form of pmap-style data parallelism:
one program, no per-device Python loops. With `config.mesh.spatial = N > 1` the mesh is 2-D, `(data, spatial)`:
3D volumes `[B, D, H, W, C]` are also split along depth D over the N devices of `spatial` (GSPMD partitions the
convolutions, exchanging halos, and reduces normalisation statistics and gradients across the split), so one
volume can span several devices; with N = 1 the mesh and every sharding are the 1-D ones of before.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gazejax.models.layers import SPATIAL_AXIS  # the mesh axis the models' sharding constraints look for

DATA_AXIS = "data"
VOLUME_RANK = 5  # [B, D, H, W, C]: arrays of this rank or more are volumes, split along D over `spatial`


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


def make_mesh(num_devices: int | None = None, devices: list | None = None, process_count: int | None = None,
              spatial: int = 1, spatial_name: str = "config.mesh.spatial") -> Mesh:
    """The mesh over all (or the first `num_devices`) global devices (`devices`, `process_count`: JAX's own by
    default): 1-D `data` for `spatial` = 1, else 2-D `(data, spatial)` with `spatial` consecutive devices per row.
    Every process must own a device of the mesh (one without could hold no share of the state), and a row of the
    spatial axis must lie within one process (each process reads whole volumes: `spatial` divides the devices per
    process). Errors name `spatial` as `spatial_name` (the config field, or a command's flag)."""
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
    spatial = int(spatial)
    if spatial == 1:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    if spatial < 1 or len(devices) % spatial:
        raise ValueError(f"{spatial_name}={spatial} must be >= 1 and divide the mesh's {len(devices)} devices")
    grid = np.asarray(devices).reshape(len(devices) // spatial, spatial)
    if any(len({d.process_index for d in row}) > 1 for row in grid):
        per_process = len(devices) // process_count
        raise ValueError(f"{spatial_name}={spatial} spans processes: it must divide the {per_process} devices "
                         f"of each process (every process reads whole volumes)")
    return Mesh(grid, (DATA_AXIS, SPATIAL_AXIS))


def mesh_from_config(config: Any) -> Mesh:
    """The training mesh of `config`: `num_devices` (0 = all) and `mesh.spatial` (absent = 1)."""
    mesh_cfg = config.get("mesh") if hasattr(config, "get") else None
    spatial = int(mesh_cfg.get("spatial", 1) or 1) if mesh_cfg is not None else 1
    return make_mesh(config.get("num_devices") or None, spatial=spatial)


def spatial_size(mesh: Mesh) -> int:
    """Devices along the `spatial` axis (1 on a 1-D mesh)."""
    return int(mesh.shape.get(SPATIAL_AXIS, 1))


def data_size(mesh: Mesh) -> int:
    """Devices along the `data` axis: how many ways the batch is split."""
    return int(mesh.shape[DATA_AXIS])


def batch_spec(mesh: Mesh, shape: tuple) -> P:
    """PartitionSpec of a batch leaf of `shape`: rows over `data`; on a 2-D mesh a volume (rank >= 5) also split
    along depth over `spatial` when its depth divides (else replicated along `spatial`, still exact)."""
    n = spatial_size(mesh)
    if n == 1 or len(shape) < VOLUME_RANK or shape[1] % n:
        return P(DATA_AXIS)
    return P(DATA_AXIS, SPATIAL_AXIS)


def check_spatial_inputs(inputs: Any, mesh: Mesh) -> None:
    """One-line ValueErrors for a 2-D mesh that cannot split the model's inputs (`inputs`: one example batch): a
    method without 3D volumes (rank < 5), or a volume depth that `mesh.spatial` does not divide."""
    n = spatial_size(mesh)
    if n == 1:
        return
    shapes = [np.shape(x) for x in jax.tree.leaves(inputs)]
    volumes = [s for s in shapes if len(s) >= VOLUME_RANK]
    if not volumes:
        raise ValueError(f"config.mesh.spatial={n}: spatial partitioning splits 3D volumes [B, D, H, W, C]; this "
                         f"method's inputs are {shapes} (2D): use mesh.spatial=1")
    for shape in volumes:
        if shape[1] % n:
            raise ValueError(f"config.mesh.spatial={n} does not divide the input depth {shape[1]} (input shape "
                             f"{tuple(shape[1:])}: config.data.crop_size)")


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` (a jitted function) traced and lowered under `jax.set_mesh(mesh)` on a 2-D mesh, so the models' sharding
    constraints (`gazejax.models.layers.constrain_spatial`) see the `spatial` axis; `fn` itself on a 1-D mesh."""
    return fn if spatial_size(mesh) == 1 else _OnMesh(fn, mesh)


class _OnMesh:
    def __init__(self, fn: Callable, mesh: Mesh):
        self.fn, self.mesh = fn, mesh

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn.lower(*args, **kwargs)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Per-process share of the global batch; the global batch must divide evenly over the `data` axis."""
    n_dev, n_spatial = data_size(mesh), spatial_size(mesh)
    if global_batch % n_dev:
        where = (f"the {n_dev} devices of the mesh (3D volumes can instead be split over devices: "
                 f"--config.mesh.spatial)" if n_spatial == 1 else
                 f"the mesh's data axis ({n_dev} = {mesh.devices.size} devices / config.mesh.spatial={n_spatial})")
        raise ValueError(f"global batch size {global_batch} is not divisible by {where}")
    return global_batch // jax.process_count()


def leaf_sharding(mesh: Mesh, x: Any) -> NamedSharding:
    """The NamedSharding of one batch leaf (`batch_spec`); the 1-D `batch_sharded` on a 1-D mesh."""
    if spatial_size(mesh) == 1:
        return batch_sharded(mesh)
    return NamedSharding(mesh, batch_spec(mesh, np.shape(x)))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch (this process's rows) -> globally sharded jax arrays (volumes split along depth on a
    2-D mesh)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(leaf_sharding(mesh, x), np.asarray(x)), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree replicated on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
