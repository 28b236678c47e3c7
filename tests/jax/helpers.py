"""Helpers shared by the JAX model tests."""
from __future__ import annotations

import jax
import numpy as np

from hparams import load_config
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES


def load_reference_config(*overrides: str):
    """The reference config (batch sizes 4) plus `section.key=value` overrides."""
    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + overrides)


def nchw_to_nhwc(array) -> np.ndarray:
    return np.asarray(array).transpose(0, 2, 3, 1)


def max_relative_error(actual, expected) -> float:
    """max |a - e| / max |e|: a relative error that tolerates exact zeros in `expected`."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def make_forward(hp):
    """A jitted forward + loss: (params, x, noise, posterior_temperature, step) -> (logits, post, prior, loss)."""
    model = UniversalAutoEncoder(hp)

    @jax.jit
    def forward(params, x, noise, posterior_temperature, step):
        logits, posterior, prior = model.apply({"params": params}, jax.random.PRNGKey(0), x,
                                               posterior_temperature=posterior_temperature, noise=noise)
        return logits, posterior, prior, compute_loss(hp, x, logits, posterior, prior, step)

    return forward


# A tiny 8x8 model (3 latent groups) so that jitted gradients compile in seconds.
TINY_OVERRIDES = (
    "data.target_res=8",
    "model.input_conv_filters=8",
    "model.up_strides=[2, 2]",
    "model.up_n_blocks_per_res=[1, 0]",
    "model.up_n_blocks=[1, 1]",
    "model.up_n_layers=[1, 1]",
    "model.up_filters=[8, 8]",
    "model.up_mid_filters_ratio=[0.5, 0.5]",
    "model.up_kernel_size=[3, 3]",
    "model.up_skip_filters=[8, 8]",
    "model.down_strides=[2, 2]",
    "model.down_n_blocks_per_res=[1, 0]",
    "model.down_n_blocks=[1, 1]",
    "model.down_n_layers=[1, 1]",
    "model.down_filters=[8, 8]",
    "model.down_mid_filters_ratio=[0.5, 0.5]",
    "model.down_kernel_size=[3, 3]",
    "model.down_latent_variates=[4, 4]",
    "model.num_output_mixtures=2",
)


def load_tiny_config(*overrides: str):
    return load_reference_config(*TINY_OVERRIDES, *overrides)
