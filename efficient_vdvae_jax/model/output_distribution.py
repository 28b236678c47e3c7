"""Output likelihoods, their samplers and mean images (SPEC.md section 5), NHWC.

Discretized mixture of logistics for RGB and single-channel images, and a
Bernoulli for binarized MNIST, with the distributions' mean images
(`output_mean`, for synthesis.output_sampling = 'mean'). The output conv's
mixture parameters use the JAX original's (3M, C) layout: logits channel
`M + j*C + c` holds parameter j of colour channel c.
"""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp

from efficient_vdvae_common.architecture import MNIST_CROP
from efficient_vdvae_common.output_distribution import OutputDistribution
from hparams.schema import OUTPUT_SAMPLINGS, unknown_choice
from efficient_vdvae_jax.model.latent_layers import beta_softplus


def split_mol_logits(logits: jax.Array, dist: OutputDistribution
                     ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(mixture logits (B,H,W,M), means, raw scales, tanh'd coefficients (each B,H,W,M,C))."""
    m, c = dist.num_mixtures, dist.channels
    params = logits[..., m:].reshape(logits.shape[:-1] + (3 * m, c))
    return logits[..., :m], params[..., :m, :], params[..., m:2 * m, :], jnp.tanh(params[..., 2 * m:, :])


def _std_base_scales(raw: jax.Array, dist: OutputDistribution) -> jax.Array:
    return jnp.maximum(beta_softplus(raw, dist.smoothing_beta), math.exp(dist.min_log_scale))


def mol_log_scales(raw: jax.Array, dist: OutputDistribution) -> tuple[jax.Array, jax.Array]:
    """(inverse scale, log scale) of the logistics, floored at exp(min_mol_logscale)."""
    if dist.base == "std":
        scales = _std_base_scales(raw, dist)
        return 1.0 / scales, jnp.log(scales)
    log_scales = jnp.maximum(raw, dist.min_log_scale)
    return jnp.exp(-dist.smoothing_beta * log_scales), log_scales


def mol_scales(raw: jax.Array, dist: OutputDistribution) -> jax.Array:
    """The logistics' scales, floored at exp(min_mol_logscale)."""
    if dist.base == "std":
        return _std_base_scales(raw, dist)
    return jnp.exp(dist.smoothing_beta * jnp.maximum(raw, dist.min_log_scale))


def _autoregressive_means(means: jax.Array, coefs: jax.Array, rgb: jax.Array) -> jax.Array:
    """Green and blue means depend linearly on the red (and green) values; grayscale has no AR."""
    if means.shape[-1] != 3:
        return means
    r, g = rgb[..., 0], rgb[..., 1]
    return jnp.stack([means[..., 0],
                      means[..., 1] + coefs[..., 0] * r,
                      means[..., 2] + coefs[..., 1] * r + coefs[..., 2] * g], axis=-1)


def mol_log_prob(targets: jax.Array, logits: jax.Array, dist: OutputDistribution) -> jax.Array:
    """Log-likelihood of each pixel (B, H, W), summed over channels, mixed over components."""
    min_pix, max_pix = dist.pixel_range
    n_classes = dist.num_classes
    mixture_logits, means, raw_scales, coefs = split_mol_logits(logits, dist)
    inv_scales, log_scales = mol_log_scales(raw_scales, dist)
    t = targets[..., None, :]  # B, H, W, 1, C
    centered = t - _autoregressive_means(means, coefs, t)
    plus = inv_scales * (centered + 1.0 / n_classes)
    minus = inv_scales * (centered - 1.0 / n_classes)
    log_cdf_plus = plus - jax.nn.softplus(plus)
    log_one_minus_cdf_min = -jax.nn.softplus(minus)
    delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
    mid = inv_scales * centered
    log_pdf_mid = mid - log_scales - 2.0 * jax.nn.softplus(mid)
    # The max(delta, 1e-12) keeps the unused branch's gradient finite under jnp.where.
    log_p = jnp.where(t == min_pix, log_cdf_plus,
                      jnp.where(t == max_pix, log_one_minus_cdf_min,
                                jnp.where(delta > 1e-5, jnp.log(jnp.maximum(delta, 1e-12)),
                                          log_pdf_mid - math.log(n_classes / 2.0))))
    log_p = jnp.sum(log_p, axis=-1) + jax.nn.log_softmax(mixture_logits, axis=-1)
    return jax.nn.logsumexp(log_p, axis=-1)


def bernoulli_log_prob(targets: jax.Array, logits: jax.Array) -> jax.Array:
    """Log-likelihood of each pixel (B, 28, 28) on the central crop of padded MNIST."""
    t = targets[:, MNIST_CROP, MNIST_CROP, 0]
    l = logits[:, MNIST_CROP, MNIST_CROP, 0]  # noqa: E741
    return t * l - jax.nn.softplus(l)


def sample_mol(logits: jax.Array, dist: OutputDistribution, rng: jax.Array,
               temperature: float | jax.Array = 1.0) -> jax.Array:
    """Images (B, H, W, C) in [min_pix, max_pix]: Gumbel-max component choice, logistic sample, RGB AR."""
    min_pix, max_pix = dist.pixel_range
    mixture_logits, means, raw_scales, coefs = split_mol_logits(logits, dist)
    scales = mol_scales(raw_scales, dist)
    choice_rng, logistic_rng = jax.random.split(rng)
    u = jax.random.uniform(choice_rng, mixture_logits.shape, minval=1e-5, maxval=1.0 - 1e-5)
    component = jnp.argmax(mixture_logits / temperature - jnp.log(-jnp.log(u)), axis=-1)
    one_hot = jax.nn.one_hot(component, mixture_logits.shape[-1], dtype=means.dtype)[..., None]  # B,H,W,M,1
    means, scales, coefs = (jnp.sum(p * one_hot, axis=-2) for p in (means, scales, coefs))
    u = jax.random.uniform(logistic_rng, means.shape, minval=1e-5, maxval=1.0 - 1e-5)
    x = means + scales * temperature * (jnp.log(u) - jnp.log(1.0 - u))
    if x.shape[-1] != 3:
        return jnp.clip(x, min_pix, max_pix)
    r = jnp.clip(x[..., 0], min_pix, max_pix)
    g = jnp.clip(x[..., 1] + coefs[..., 0] * r, min_pix, max_pix)
    b = jnp.clip(x[..., 2] + coefs[..., 1] * r + coefs[..., 2] * g, min_pix, max_pix)
    return jnp.stack([r, g, b], axis=-1)


def sample_bernoulli(logits: jax.Array, rng: jax.Array) -> jax.Array:
    """Binary images (B, 28, 28, 1) drawn with p = sigmoid(logits) on the central crop."""
    probs = jax.nn.sigmoid(logits[:, MNIST_CROP, MNIST_CROP, :])
    return jax.random.bernoulli(rng, probs).astype(logits.dtype)


def sample_output(logits: jax.Array, dist: OutputDistribution, rng: jax.Array,
                  temperature: float | jax.Array = 1.0) -> jax.Array:
    """Draw images from the output distribution given by `logits`."""
    if dist.bernoulli:
        return sample_bernoulli(logits, rng)
    return sample_mol(logits, dist, rng, temperature)


def mol_mean(logits: jax.Array, dist: OutputDistribution) -> jax.Array:
    """The mixture's mean image (B, H, W, C) in [min_pix, max_pix] (SPEC.md section 5).

    Each component's location for green (blue) is its mean plus the
    coefficients times the same component's red (and green) locations, every
    location clipped to the pixel range (the sampler with the logistic noise at
    its mean, 0); the image is the mixture-weighted (softmax of the mixture
    logits) sum of the locations. Clipping each component, as the pixel values
    are, keeps an unlikely component with a far-off location from dragging the mean.
    """
    min_pix, max_pix = dist.pixel_range
    mixture_logits, means, _, coefs = split_mol_logits(logits, dist)
    clip = lambda v: jnp.clip(v, min_pix, max_pix)  # noqa: E731
    if means.shape[-1] == 3:
        r = clip(means[..., 0])
        g = clip(means[..., 1] + coefs[..., 0] * r)
        b = clip(means[..., 2] + coefs[..., 1] * r + coefs[..., 2] * g)
        means = jnp.stack([r, g, b], axis=-1)
    else:
        means = clip(means)
    weights = jax.nn.softmax(mixture_logits, axis=-1)[..., None]  # B, H, W, M, 1
    return jnp.clip(jnp.sum(means * weights, axis=-2), min_pix, max_pix)


def bernoulli_mean(logits: jax.Array) -> jax.Array:
    """Pixel probabilities (B, 28, 28, 1), sigmoid(logits) on the central crop."""
    return jax.nn.sigmoid(logits[:, MNIST_CROP, MNIST_CROP, :])


def output_mean(logits: jax.Array, dist: OutputDistribution) -> jax.Array:
    """The mean image of the output distribution given by `logits` (no randomness, no temperature)."""
    if dist.bernoulli:
        return bernoulli_mean(logits)
    return mol_mean(logits, dist)


def render_output(logits: jax.Array, dist: OutputDistribution, rng: jax.Array, sampling: str = "sample",
                  temperature: float | jax.Array = 1.0) -> jax.Array:
    """The images synthesis writes (synthesis.output_sampling): a sample at `temperature`, or the mean
    (`rng` unused)."""
    if sampling == "mean":
        return output_mean(logits, dist)
    if sampling != "sample":
        raise unknown_choice("synthesis.output_sampling", sampling, OUTPUT_SAMPLINGS)
    return sample_output(logits, dist, rng, temperature)
