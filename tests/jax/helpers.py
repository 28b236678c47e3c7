"""Helpers shared by the JAX model tests."""
from __future__ import annotations

import jax
import numpy as np

from hparams import load_config
from efficient_vdvae_jax.model import UniversalAutoEncoder, compute_loss
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES
from tests.helpers import TWO_LEVEL_MODEL


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


# A tiny 8x8 model (3 latent groups): jitted gradients compile in seconds.
TINY_OVERRIDES = ("data.target_res=8",) + TWO_LEVEL_MODEL


def load_tiny_config(*overrides: str):
    return load_reference_config(*TINY_OVERRIDES, *overrides)
