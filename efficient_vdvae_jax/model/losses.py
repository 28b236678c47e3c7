"""The objective: reconstruction, analytic KL, gamma balancing, beta warm-up (SPEC.md section 5), NHWC."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from efficient_vdvae_common.architecture import LN2, image_dims, is_binarized_mnist, report_units_per_nat_per_dim
from efficient_vdvae_jax.model.latent_layers import GaussianStats
from efficient_vdvae_jax.model.output_distribution import bernoulli_log_prob, mol_log_prob
from efficient_vdvae_jax.model.schedules import gamma_balanced_kl, kl_beta


class LossOutput(NamedTuple):
    """Terms of the objective. "Report units" are bits/dim, or nats per image for binarized_mnist."""

    loss: jax.Array  # optimised: recon_loss + beta * (balanced) KL, nats/dim
    recon_loss: jax.Array  # nats/dim
    kl_per_group: jax.Array  # (L,) nats per image dim
    avg_kl_per_group: jax.Array  # (L,) bits per latent dim
    kl_div: jax.Array  # sum of kl_per_group, report units
    recon_report: jax.Array  # recon_loss in report units
    nelbo: jax.Array  # recon_report + kl_div, report units
    beta: jax.Array

def gaussian_kl(posterior: GaussianStats, prior: GaussianStats, base: str, smoothing_beta: float) -> jax.Array:
    """Elementwise KL(posterior || prior) of diagonal Gaussians given in `base`."""
    if base == "std":
        inv_prior_std = 1.0 / prior[1]
        ratio = posterior[1] * inv_prior_std
    else:
        inv_prior_std = jnp.exp(-smoothing_beta * prior[1])
        ratio = jnp.exp(smoothing_beta * posterior[1]) * inv_prior_std
    delta = (posterior[0] - prior[0]) * inv_prior_std
    return 0.5 * (delta * delta + ratio * ratio) - 0.5 - jnp.log(ratio)


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
    # The objective in float32 even when the network computed in bfloat16.
    x, logits = x.astype(jnp.float32), logits.astype(jnp.float32)
    as_f32 = lambda stats: [(m.astype(jnp.float32), s.astype(jnp.float32)) for m, s in stats]  # noqa: E731
    posterior_stats, prior_stats = as_f32(posterior_stats), as_f32(prior_stats)
    batch = x.shape[0]
    dims = image_dims(hp)
    log_prob = bernoulli_log_prob(x, logits) if is_binarized_mnist(hp) else mol_log_prob(hp, x, logits)
    recon_loss = -jnp.sum(log_prob) / (batch * dims)

    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    kls = [gaussian_kl(p, q, base, smoothing_beta) for p, q in zip(posterior_stats, prior_stats)]
    if variate_masks is not None:
        kls = [kl if mask is None else kl * jnp.asarray(mask, kl.dtype) for kl, mask in zip(kls, variate_masks)]
    kl_per_group = jnp.stack([jnp.sum(kl) for kl in kls]) / (batch * dims)
    avg_kl_nats = jnp.stack([jnp.mean(kl) for kl in kls])  # same-size examples: mean of means
    if step is None:
        kl, beta = jnp.sum(kl_per_group), jnp.ones((), jnp.float32)
    else:
        kl, beta = gamma_balanced_kl(hp, kl_per_group, avg_kl_nats, step), kl_beta(hp, step)

    to_report = report_units_per_nat_per_dim(hp)
    recon_report = recon_loss * to_report
    kl_div = jnp.sum(kl_per_group) * to_report
    return LossOutput(loss=recon_loss + beta * kl, recon_loss=recon_loss, kl_per_group=kl_per_group,
                      avg_kl_per_group=avg_kl_nats / LN2, kl_div=kl_div, recon_report=recon_report,
                      nelbo=recon_report + kl_div, beta=beta)
