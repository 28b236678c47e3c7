"""The objective: reconstruction, analytic KL, gamma balancing, beta warm-up (SPEC.md section 5), NHWC."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from efficient_vdvae_common.architecture import LN2, image_dims, report_units_per_nat_per_dim
from efficient_vdvae_common.objective import LossOutput, gaussian_kl
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_jax.model.latent_layers import GaussianStats
from efficient_vdvae_jax.model.output_distribution import bernoulli_log_prob, mol_log_prob
from efficient_vdvae_jax.model.schedules import gamma_weights, kl_beta, use_gamma


def gamma_balanced_kl(hp: Any, kl_per_group: jax.Array, avg_kl_per_group_nats: jax.Array,
                      step: jax.Array | int | None) -> jax.Array:
    """The KL term: sum_g alpha_g * kl_g while balancing applies (NVAE), else sum_g kl_g.

    alpha = L * a / sum(a) (gamma_weights) weighs the groups by a, the per-latent-element
    average KL (nats) with loss.scaled_gamma, else the per-image-dim KL; under jit the
    batch is the global one, so a needs no averaging over devices.
    """
    total = jnp.sum(kl_per_group)
    applies = use_gamma(hp, step)
    if applies is False:  # known before tracing: no balanced branch (and no 0 / 0 in its gradient)
        return total
    balance = avg_kl_per_group_nats if hp.loss.scaled_gamma else kl_per_group
    return jnp.where(applies, jnp.sum(gamma_weights(balance) * kl_per_group), total)


def kl_per_variate(hp: Any, posterior_stats: Sequence[GaussianStats], prior_stats: Sequence[GaussianStats]
                   ) -> jax.Array:
    """(B, L, variates) KL in bits per image, averaged over positions: the terms of div_stats (every group
    has the same number of variates: the config's validation asks it of the modes that compute this)."""
    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    return jnp.stack([
        jnp.mean(gaussian_kl(post, prior, base, smoothing_beta, jnp), axis=(1, 2)) / LN2
        for post, prior in zip(posterior_stats, prior_stats, strict=True)
    ], axis=1)


def compute_loss(hp: Any, x: jax.Array, logits: jax.Array, posterior_stats: Sequence[GaussianStats],
                 prior_stats: Sequence[GaussianStats], step: jax.Array | int | None,
                 variate_masks: Sequence[jax.Array | None] | None = None) -> LossOutput:
    """The objective for a batch `x` (B, H, W, C); `step=None` is evaluation (beta 1, no gamma balancing).

    `variate_masks` (inference): L masks of shape (variates,) in {0, 1}, or None
    entries. A masked-off variate was drawn from the prior, so its KL term is
    zero: the masks multiply the per-variate KL before any sum (SPEC section 8).

    Sums are normalised by the batch given; under jit with a batch sharded over
    devices that is the global batch, so data parallelism changes nothing.
    """
    dist = OutputDistribution.from_hparams(hp)
    # The objective in float32 even when the network computed in bfloat16.
    x, logits = x.astype(jnp.float32), logits.astype(jnp.float32)
    as_f32 = lambda stats: [(m.astype(jnp.float32), s.astype(jnp.float32)) for m, s in stats]  # noqa: E731
    posterior_stats, prior_stats = as_f32(posterior_stats), as_f32(prior_stats)
    batch = x.shape[0]
    dims = image_dims(hp)

    log_prob = bernoulli_log_prob(x, logits) if dist.bernoulli else mol_log_prob(x, logits, dist)
    recon_loss = -jnp.sum(log_prob) / (batch * dims)

    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    kls = [gaussian_kl(p, q, base, smoothing_beta, jnp) for p, q in zip(posterior_stats, prior_stats, strict=True)]
    if variate_masks is not None:
        kls = [kl if mask is None else kl * jnp.asarray(mask, kl.dtype) for kl, mask in zip(kls, variate_masks)]
    kl_per_group = jnp.stack([jnp.sum(kl) for kl in kls]) / (batch * dims)
    avg_kl_nats = jnp.stack([jnp.mean(kl) for kl in kls])  # same-size examples: mean of means
    kl_loss = gamma_balanced_kl(hp, kl_per_group, avg_kl_nats, step)
    beta = jnp.ones((), jnp.float32) if step is None else kl_beta(hp, step)

    to_report = report_units_per_nat_per_dim(hp)
    recon_report = recon_loss * to_report
    kl_div = jnp.sum(kl_per_group) * to_report
    return LossOutput(loss=recon_loss + beta * kl_loss, recon_loss=recon_loss, kl_per_group=kl_per_group,
                      avg_kl_per_group=avg_kl_nats / LN2, kl_div=kl_div, recon_report=recon_report,
                      nelbo=recon_report + kl_div, beta=beta)
