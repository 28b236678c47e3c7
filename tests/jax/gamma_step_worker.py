"""One JAX training step at a given step counter on a 1-device and on an N-device mesh, in one process.

    XLA_FLAGS=--xla_force_host_platform_device_count=N python gamma_step_worker.py OUT STEP [section.key=value ...]

The same replicated state and the same global batch go through the trainer's
jitted step (`make_train_step`) on each mesh; the gradients of the training
loss at STEP are taken the same way. OUT (npz) holds, per mesh size M,
`grad_M/<path>` and `param_M/<path>`.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_common.noise_streams import TRAIN_STREAM
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_jax.distributed import global_mesh, replicate, shard_batch
from efficient_vdvae_jax.train_step import create_train_state, init_params, make_train_step
from efficient_vdvae_jax.trainer import step_key
from hparams import load_config

CONFIG = REPO_ROOT / "tests" / "fixtures" / "original_torch_small" / "config.cfg"


def flat(prefix: str, tree) -> dict[str, np.ndarray]:
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def main(out: str, step: int, overrides: list[str]) -> None:
    hp = load_config(CONFIG, overrides=overrides)
    model = UniversalAutoEncoder(hp)
    rng = np.random.default_rng(7)
    shape = (hp.train.batch_size, hp.data.target_res, hp.data.target_res, hp.data.channels)
    x = (rng.integers(0, 256, shape).astype(np.float32) / 127.5 - 1.0)
    state = create_train_state(hp, init_params(hp, model, jax.random.PRNGKey(hp.run.seed)))
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    key = step_key(hp.run.seed, TRAIN_STREAM, 0)

    def loss(params, x):
        logits, posterior, prior = model.apply({"params": params}, key, x)
        return compute_loss(hp, x, logits, posterior, prior, step).loss

    gradient = jax.jit(jax.grad(loss))
    train_step = make_train_step(hp, model, donate_state=False)  # `state` is stepped on each mesh
    results = {}
    for devices in (1, jax.device_count()):
        mesh = global_mesh(devices)
        batch = shard_batch(mesh, x.reshape((devices, -1) + x.shape[1:]))
        replicated = replicate(mesh, state)
        results.update(flat(f"grad_{devices}/", gradient(replicated.params, batch)))
        new_state, stats = train_step(replicated, key, batch)
        assert not bool(stats["skipped"])
        results.update(flat(f"param_{devices}/", new_state.params))
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
