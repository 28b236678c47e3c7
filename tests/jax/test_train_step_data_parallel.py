"""Data parallelism: on 2 (forced host) devices the train step computes exactly the 1-device step.

Runs in a subprocess because the device count is fixed when JAX starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.distributed import global_mesh, replicate, shard_batch
    from efficient_vdvae_jax.train_step import create_train_state, make_train_step
    from tests.jax.helpers import load_tiny_config

    assert jax.device_count() == 2, jax.devices()
    hp = load_tiny_config("optimizer.learning_rate_scheme='exponential'", "optimizer.decay_start=0",
                          "optimizer.warmup_steps=0.", "optimizer.type='Adam'")
    # Random parameters from the traced shapes: cheaper than compiling init.
    shapes = jax.eval_shape(UniversalAutoEncoder(hp).init, jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    values = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (0.2 * values.normal(size=s.shape)).astype(np.float32), shapes["params"])
    state = create_train_state(hp, params)
    batch = np.random.default_rng(0).uniform(-1, 1, size=(2, 2, 8, 8, 3)).astype(np.float32)  # 2 devices x 2
    rng = jax.random.PRNGKey(1)
    train_step = make_train_step(hp, donate_state=False)  # `state` is stepped twice

    one_device, one_stats = train_step(state, rng, jax.device_put(batch.reshape(4, 8, 8, 3), jax.devices()[0]))
    mesh = global_mesh(2)
    sharded_batch = shard_batch(mesh, batch)
    assert len(sharded_batch.sharding.device_set) == 2
    two_devices, two_stats = train_step(replicate(mesh, state), rng, sharded_batch)

    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(two_stats[key], one_stats[key], rtol=1e-5)
    # Adam's first update is lr * g / (|g| + eps): comparing it compares the gradients' signs;
    # the second moment after one step is (1 - b2) g^2, which compares their values.
    for a, b in zip(jax.tree.leaves(two_devices.opt_state), jax.tree.leaves(one_device.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-12)
    for a, b in zip(jax.tree.leaves(two_devices.params), jax.tree.leaves(one_device.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    print("DATA PARALLEL OK")
""")


@pytest.mark.slow  # a fresh JAX process compiling the train step twice: ~30 s of CPU
def test_two_devices_compute_the_one_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DATA PARALLEL OK" in result.stdout
