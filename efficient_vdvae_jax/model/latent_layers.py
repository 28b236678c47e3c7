"""Diagonal Gaussian latent layers (SPEC.md section 2).

Stats are a pair `(mean, std)` when `distribution_base == 'std'` and
`(mean, logstd)` when it is 'logstd' (then `std = exp(beta * logstd)`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient_vdvae_jax.model.conv2d import conv2d
from hparams.schema import DISTRIBUTION_BASES, unknown_choice

GaussianStats = tuple[jax.Array, jax.Array]


def beta_softplus(x: jax.Array, beta: float) -> jax.Array:
    """softplus_b(x) = log(1 + exp(b x)) / b: a smoother gradient than exp for small b."""
    return jax.nn.softplus(beta * x) / beta


def gaussian_std(stats: GaussianStats, base: str, smoothing_beta: float) -> jax.Array:
    """The standard deviation of a Gaussian given by its stats in either base."""
    return stats[1] if base == "std" else jnp.exp(smoothing_beta * stats[1])


def sample_gaussian(stats: GaussianStats, base: str, smoothing_beta: float,
                    eps: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """z = mean + T * std * eps, with eps standard normal."""
    mean = stats[0]
    return mean + temperature * gaussian_std(stats, base, smoothing_beta) * eps


class GaussianLatentLayer(nn.Module):
    """1x1 conv to (mean, raw) per variate; optionally relative to a prior (NVAE residual)."""

    variates: int
    base: str
    smoothing_beta: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, prior_stats: GaussianStats | None = None) -> GaussianStats:
        h = conv2d(2 * self.variates, 1, dtype=self.dtype, name="projection")(x)
        mean, raw = jnp.split(h, 2, axis=-1)
        if self.base == "std":
            scale = beta_softplus(raw, self.smoothing_beta)
            if prior_stats is not None:
                mean, scale = mean + prior_stats[0], scale * prior_stats[1]
        elif self.base == "logstd":
            scale = raw
            if prior_stats is not None:
                mean, scale = mean + prior_stats[0], scale + prior_stats[1]
        else:
            raise unknown_choice("model.distribution_base", self.base, DISTRIBUTION_BASES)
        return mean, scale
