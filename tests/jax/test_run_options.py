"""run.gradient_checkpointing and run.mixed_precision: same parameters, same numbers (up to bfloat16)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from tests.jax.helpers import load_tiny_config, max_relative_error


def random_params(model, x):
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    values = np.random.default_rng(0)
    return jax.tree.map(lambda s: (0.2 * values.normal(size=s.shape)).astype(np.float32), shapes)


def loss_and_grads(hp, params, x):
    model = UniversalAutoEncoder(hp)

    def loss(p):
        logits, post, prior = model.apply({"params": p}, jax.random.PRNGKey(1), x)
        out = compute_loss(hp, x, logits, post, prior, 0)
        return out.loss, (logits, out)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.fixture(scope="module")
def inputs():
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, size=(2, 8, 8, 3)).astype(np.float32))
    return x, random_params(UniversalAutoEncoder(load_tiny_config()), x)


@pytest.fixture(scope="module")
def baseline(inputs):
    x, params = inputs
    return x, params, loss_and_grads(load_tiny_config(), params, x)


@pytest.mark.parametrize("option", ["run.gradient_checkpointing=True", "run.mixed_precision=True"])
def test_option_keeps_the_parameter_tree(inputs, option):
    x, params = inputs
    shapes = jax.eval_shape(UniversalAutoEncoder(load_tiny_config(option)).init, jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(jnp.shape, params)


@pytest.mark.slow  # three gradient compiles
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(baseline):
    x, params, ((loss, (logits, _)), grads) = baseline
    (loss_r, (logits_r, _)), grads_r = loss_and_grads(load_tiny_config("run.gradient_checkpointing=True"), params, x)
    assert max_relative_error(logits_r, logits) < 1e-5
    assert float(loss_r) == pytest.approx(float(loss), rel=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        assert max_relative_error(g_r, g) < 1e-4


@pytest.mark.slow
def test_mixed_precision_close_to_float32_with_a_float32_loss(baseline):
    x, params, ((loss, (logits, out)), grads) = baseline
    (loss_bf, (logits_bf, out_bf)), grads_bf = loss_and_grads(load_tiny_config("run.mixed_precision=True"), params, x)
    assert logits_bf.dtype == jnp.bfloat16
    assert out_bf.loss.dtype == jnp.float32 and out_bf.kl_per_group.dtype == jnp.float32
    assert max_relative_error(logits_bf, logits) < 0.05
    assert float(loss_bf) == pytest.approx(float(loss), rel=0.02)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads_bf))
