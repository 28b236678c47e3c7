"""efficient_vdvae_jax.distributed in one process: when a run joins a group, and the mesh helpers.

The multi-process behaviour itself is tested end to end in
tests/jax/test_distributed_multihost.py (slow).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from efficient_vdvae_jax import distributed
from efficient_vdvae_jax.distributed import (any_rank, global_mesh, init_distributed, local_device_range, replicate,
                                             shard_batch)

_ENV = ("JAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
        "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.mark.parametrize("env, several", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False),  # the batch script itself, outside srun
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"JAX_DISTRIBUTED": "1"}, True),
    ({"JAX_DISTRIBUTED": "0", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, False),
])
def test_when_a_process_joins_a_group(monkeypatch, env, several):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed._launched_as_several_processes() is several


def test_a_bad_process_count_is_named(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        distributed._env_int("JAX_NUM_PROCESSES")


def test_one_plain_process(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    context = init_distributed()
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert any_rank(True) and not any_rank(False)


def test_mesh_helpers_in_one_process():
    mesh = global_mesh(1)
    assert mesh.size == 1 and local_device_range(mesh) == range(0, 1)
    batch = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 6, 4)  # (local devices, per device, ...)
    sharded = shard_batch(mesh, batch)
    assert sharded.shape == (6, 4)
    np.testing.assert_array_equal(np.asarray(sharded), batch[0])
    with pytest.raises(ValueError, match="2 device slices"):
        shard_batch(mesh, np.zeros((2, 3, 4), np.float32))
    tree = replicate(mesh, {"w": np.ones(3, np.float32)})
    assert tree["w"].sharding.is_fully_replicated and isinstance(tree["w"], jax.Array)
