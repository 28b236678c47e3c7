"""Layers and model plumbing: padding rule, variate masks, prior sampling, temperatures."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.model.conv2d import conv2d, same_padding
from tests.jax.helpers import load_reference_config, load_tiny_config


@pytest.mark.parametrize("kernel, stride, expected", [
    (3, 1, ((1, 1), (1, 1))), (2, 1, ((1, 0), (1, 0))), ((1, 4), 1, ((0, 0), (2, 1))),
    (4, 2, ((1, 1), (1, 1))), (5, 2, ((2, 1), (2, 1))), (2, 2, ((0, 0), (0, 0)))])
def test_same_padding_puts_the_odd_pixel_top_left(kernel, stride, expected):
    assert same_padding(kernel, stride) == expected


@pytest.mark.parametrize("kernel, stride", [(3, 1), (4, 2), (2, 2)])
def test_conv_equals_xla_same_padding_when_the_total_is_even(kernel, stride):
    """XLA's 'SAME' agrees with k - s whenever the total is even and the size divides by the stride."""
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 2))
    conv = conv2d(3, kernel, stride=stride)
    params = conv.init(jax.random.PRNGKey(1), x)
    expected = jax.lax.conv_general_dilated(x, params["params"]["kernel"], (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_odd_pixel_last_equals_xla_same_padding():
    """odd_pixel_first=False is XLA's (and the JAX original's) 'SAME' at stride 1."""
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 8, 2))
    conv = conv2d(3, (2, 4), odd_pixel_first=False)
    params = conv.init(jax.random.PRNGKey(1), x)
    expected = jax.lax.conv_general_dilated(x, params["params"]["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_init_scale_multiplies_glorot_weights():
    x = jnp.zeros((1, 4, 4, 8))
    plain = conv2d(8, 3).init(jax.random.PRNGKey(0), x)["params"]["kernel"]
    scaled = conv2d(8, 3, init_scale=0.25).init(jax.random.PRNGKey(0), x)["params"]["kernel"]
    np.testing.assert_allclose(scaled, 0.25 * plain, rtol=1e-6)
    limit = np.sqrt(6.0 / (9 * 8 + 9 * 8))  # Glorot uniform bound: sqrt(6 / (fan_in + fan_out))
    assert float(jnp.max(jnp.abs(plain))) <= limit and float(jnp.max(jnp.abs(plain))) > 0.8 * limit


@pytest.fixture(scope="module")
def tiny():
    hp = load_tiny_config()
    model = UniversalAutoEncoder(hp)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1, maxval=1)
    # Random values everywhere (a fresh init leaves biases, h and scale_bias at zero); eval_shape
    # only traces, which is much cheaper than compiling init.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)["params"]
    values = np.random.default_rng(2)
    params = jax.tree.map(lambda s: (0.2 * values.normal(size=s.shape)).astype(np.float32), shapes)
    return hp, model, params, x


def test_variate_masks(tiny):
    hp, model, params, x = tiny
    apply = jax.jit(model.apply)
    rng = jax.random.PRNGKey(3)
    ones = [jnp.ones(v) for v in (4, 4, 4)]
    zeros = [jnp.zeros(v) for v in (4, 4, 4)]
    unmasked = apply({"params": params}, rng, x)[0]
    np.testing.assert_allclose(apply({"params": params}, rng, x, variate_masks=ones)[0], unmasked, rtol=1e-6)
    # All variates masked off: every z comes from the prior, so the input no longer matters.
    masked = apply({"params": params}, rng, x, variate_masks=zeros)[0]
    np.testing.assert_allclose(apply({"params": params}, rng, -x, variate_masks=zeros)[0], masked, rtol=1e-6)
    assert not np.allclose(masked, unmasked)
    with pytest.raises(ValueError, match="variate_masks"):
        model.apply({"params": params}, rng, x, variate_masks=ones[:2])


def test_wrong_input_shape_names_the_config_keys(tiny):
    hp, model, params, x = tiny
    with pytest.raises(ValueError, match="data.target_res"):
        model.apply({"params": params}, jax.random.PRNGKey(0), jnp.zeros((2, 3, 8, 8)))


def test_prior_sampling_shapes_and_temperature(tiny):
    hp, model, params, _ = tiny
    sample = jax.jit(model.apply, static_argnames=("batch_size", "method"))
    logits, zs = sample({"params": params}, jax.random.PRNGKey(4), batch_size=3, temperatures=[1.0, 1.0],
                        method=model.sample_from_prior)
    assert logits.shape == (3, 8, 8, 2 * 10)
    assert [z.shape for z in zs] == [(3, 4, 4, 4), (3, 4, 4, 4), (3, 8, 8, 4)]
    cold_logits, cold_zs = sample({"params": params}, jax.random.PRNGKey(4), batch_size=3, temperatures=[0.0, 0.0],
                                  method=model.sample_from_prior)
    other_logits, _ = sample({"params": params}, jax.random.PRNGKey(5), batch_size=3, temperatures=[0.0, 0.0],
                             method=model.sample_from_prior)
    np.testing.assert_allclose(cold_logits, other_logits, rtol=1e-6)  # T = 0: prior means, no randomness
    assert not np.allclose(cold_logits, logits)
