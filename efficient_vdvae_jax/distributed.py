"""Multi-process set-up for data-parallel training, the global device mesh, and the few collectives
the trainer needs (mirrors efficient_vdvae_torch/distributed.py).

JAX runs one process per host (multi-controller SPMD): every process runs the
same program over a mesh of all processes' devices, feeds only its own devices'
slices of each global batch, and XLA inserts the cross-process all-reduce. One
plain process (`python train.py`) uses all its local devices. Every helper is
also correct for a single process, so the trainer has one code path.

When to join a group (`init_distributed`), before anything touches a JAX device:
- JAX_COORDINATOR_ADDRESS=host:port (process 0's address) with JAX_NUM_PROCESSES
  and JAX_PROCESS_ID: the explicit set-up, any launcher;
- otherwise a SLURM step (`srun`) or an Open MPI launch (`mpirun`) of more than
  one task, which jax.distributed detects by itself (coordinator, count, id);
- JAX_DISTRIBUTED=1 forces `jax.distributed.initialize()` with everything
  auto-detected (e.g. Cloud TPU pods), JAX_DISTRIBUTED=0 forbids it.
Processes on CPUs exchange data over gloo (the CPU collectives).

A lost process: when another process dies (its sockets close), the next
collective fails at once and `is_lost_process_error` recognises the error;
a process that hangs or becomes unreachable stops sending heartbeats to the
coordination service, which ends every other process after the heartbeat
timeout (run.distributed_timeout_seconds, see `init_distributed`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


@dataclass(frozen=True)
class DistributedContext:
    rank: int  # this process's index
    world_size: int  # number of processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a whole number") from None


def _launched_as_several_processes() -> bool:
    """Does the environment ask for a multi-process run (see the module docstring)?"""
    forced = os.environ.get("JAX_DISTRIBUTED", "")
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    slurm_step = all(name in os.environ for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID"))
    if slurm_step and (_env_int("SLURM_NTASKS") or 1) > 1:
        return True
    return (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1


def init_distributed(timeout_seconds: float | None = None) -> DistributedContext:
    """Join the process group the environment describes (if any); call before any other JAX use.

    `timeout_seconds` (run.distributed_timeout_seconds) is the coordination service's heartbeat
    timeout: a process not heard from for that long is declared dead and the service ends all others
    (jax's own fatal message). None: jax's default (100 s).
    """
    if jax.distributed.is_initialized():
        return DistributedContext(rank=jax.process_index(), world_size=jax.process_count())
    if not _launched_as_several_processes():
        return DistributedContext(rank=0, world_size=1)
    # Without it, XLA's CPU client cannot run a computation that spans processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = {} if timeout_seconds is None else {"heartbeat_timeout_seconds": max(1, math.ceil(timeout_seconds))}
    jax.distributed.initialize(coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
                               num_processes=_env_int("JAX_NUM_PROCESSES"),
                               process_id=_env_int("JAX_PROCESS_ID"), **timeouts)
    return DistributedContext(rank=jax.process_index(), world_size=jax.process_count())


# What a collective or the coordination service says when another process died or cannot be reached
# (gloo over TCP; gRPC statuses of the coordination service).
_LOST_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport",
                      "UNAVAILABLE", "DEADLINE_EXCEEDED", "heartbeat")


def is_lost_process_error(error: BaseException) -> bool:
    """A collective failed because another process (or its host) stopped answering: crashed, killed or lost."""
    if not is_distributed() or not isinstance(error, (RuntimeError, ValueError)):
        return False  # jax raises JaxRuntimeError (a RuntimeError) or, for some gloo failures, ValueError
    return any(marker in str(error) for marker in _LOST_PEER_MARKERS)


def is_distributed() -> bool:
    return jax.process_count() > 1


def is_main_process() -> bool:
    return jax.process_index() == 0


def shutdown_distributed() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def barrier(name: str) -> None:
    """Wait until every process got here (a no-op for one process)."""
    if is_distributed():
        multihost_utils.sync_global_devices(name)


def any_rank(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (e.g. a stop request)."""
    if not is_distributed():
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def gather_ints(values: list[int]) -> list[list[int]]:
    """Every process's `values` (same length on all), indexed by process; [values] for a single process."""
    if not is_distributed():
        return [list(values)]
    gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
    return [[int(v) for v in row] for row in np.reshape(gathered, (jax.process_count(), len(values)))]


# ---- The mesh and how arrays are laid out on it.

def global_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-d data-parallel mesh over every process's devices, process by process.

    `num_devices` keeps only the first devices of a single process (tests,
    benchmarks); a multi-process run uses all. Device order is (process,
    device id), so each process's devices are one contiguous block of the
    global batch (see `local_device_range`).
    """
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    if num_devices:
        if is_distributed() and num_devices != len(devices):
            raise ValueError(f"a run of {jax.process_count()} processes uses all {len(devices)} devices, "
                             f"not {num_devices}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-d mesh over this process's first `num_devices` devices (all by default): single-process work
    such as synthesis."""
    devices = jax.local_devices()
    return Mesh(np.asarray(devices[:num_devices] if num_devices else devices), (DATA_AXIS,))


def local_device_range(mesh: Mesh) -> range:
    """The positions in the mesh (= slices of the global batch) of this process's devices."""
    mine = [i for i, device in enumerate(mesh.devices.flat) if device.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"process {jax.process_index()}'s devices are not one contiguous block of the mesh")
    return range(mine[0], mine[-1] + 1)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Split along the first (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(mesh: Mesh, batch: np.ndarray) -> jax.Array:
    """(local devices, per_device_batch, ...) from the data iterator -> one global array split over the mesh.

    Each process passes only its own devices' slices (see local_device_range);
    the global batch is the slices of all processes in mesh order.
    """
    local = len(local_device_range(mesh))
    if batch.shape[0] != local:
        raise ValueError(f"batch has {batch.shape[0]} device slices, this process has {local} devices in the mesh")
    per_device = batch.shape[1]
    global_shape = (mesh.size * per_device,) + batch.shape[2:]
    local_batch = np.reshape(batch, (-1,) + batch.shape[2:])
    return jax.make_array_from_process_local_data(data_sharding(mesh), local_batch, global_shape)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """The same copy of `tree` (params, train state) on every device of the mesh.

    Across processes the copy goes through host memory: jax.device_put of an
    array already on one local device gives a broken array there (jax 0.10),
    and every process holds the same values (same seed, same checkpoint).
    """
    if is_distributed():
        tree = jax.device_get(tree)
    return jax.device_put(tree, replicated_sharding(mesh))


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly cross-process) global arrays, the whole array on every process."""
    if not is_distributed():
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def gather_local(tree: Any) -> Any:
    """Every process's numpy arrays concatenated along the first axis in process order (as the mesh)."""
    if not is_distributed():
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)
