"""The objective: reconstruction, analytic KL, gamma balancing, beta warm-up (SPEC.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed

from efficient_vdvae_common.architecture import LN2, image_dims, report_units_per_nat_per_dim
from efficient_vdvae_torch.model.latent_layers import GaussianStats, check_distribution_base
from efficient_vdvae_torch.model.output_distribution import OutputDistribution, bernoulli_log_prob, mol_log_prob
from efficient_vdvae_torch.model.schedules import gamma_weights, kl_beta, use_gamma


@dataclass
class LossOutput:
    """Terms of the objective. "Report units" are bits/dim, or nats per image for binarized_mnist."""

    loss: torch.Tensor  # optimised: recon_loss + beta * (balanced) KL, nats/dim
    recon_loss: torch.Tensor  # nats/dim
    kl_per_group: torch.Tensor  # (L,) nats per image dim
    avg_kl_per_group: torch.Tensor  # (L,) bits per latent dim
    kl_div: torch.Tensor  # sum of kl_per_group, report units
    recon_report: torch.Tensor  # recon_loss in report units
    nelbo: torch.Tensor  # recon_report + kl_div, report units
    beta: float


def gaussian_kl(posterior: GaussianStats, prior: GaussianStats, base: str, smoothing_beta: float) -> torch.Tensor:
    """Elementwise KL(posterior || prior) of diagonal Gaussians given in `base`."""
    if base == "std":
        inv_prior_std = 1.0 / prior[1]
        ratio = posterior[1] * inv_prior_std
    else:
        inv_prior_std = torch.exp(-smoothing_beta * prior[1])
        ratio = torch.exp(smoothing_beta * posterior[1]) * inv_prior_std
    delta = (posterior[0] - prior[0]) * inv_prior_std
    return 0.5 * (delta * delta + ratio * ratio) - 0.5 - torch.log(ratio)


def global_batch_mean(batch_means: torch.Tensor, batch: int) -> torch.Tensor:
    """Detached per-rank batch means -> means over the global batch (all data-parallel ranks).

    Gamma's weights must not depend on how the batch is split, or data-parallel
    gradients would differ from one process's (SPEC section 5): each rank's
    means are weighted by its batch size, summed over ranks, divided by the total.
    A no-op in a single process.
    """
    means = batch_means.detach()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return means
    sums = torch.cat([means.double() * batch, means.new_full((1,), float(batch), dtype=torch.float64)])
    torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
    return (sums[:-1] / sums[-1]).to(means.dtype)


def compute_loss(hp, x: torch.Tensor, logits: torch.Tensor, posterior_stats: Sequence[GaussianStats],
                 prior_stats: Sequence[GaussianStats], step: int | None,
                 variate_masks: Sequence | None = None) -> LossOutput:
    """The objective for a batch; `step=None` is evaluation (beta 1, no gamma balancing).

    `variate_masks` (inference): L masks of shape (variates,) in {0, 1}, or None
    entries. A masked-off variate was drawn from the prior, so its KL term is
    zero: the masks multiply the per-variate KL before any sum (SPEC section 8).

    Sums are normalised by the local batch size: data-parallel gradient
    averaging then gives the gradient of the global-batch loss.
    """
    dist = OutputDistribution.from_hparams(hp)
    base = check_distribution_base(hp.model.distribution_base)
    smoothing_beta = hp.model.gradient_smoothing_beta
    # Losses in float32 even under bf16 autocast.
    x, logits = x.float(), logits.float()
    batch = x.shape[0]
    dims = image_dims(hp)

    log_prob = bernoulli_log_prob(x, logits) if dist.bernoulli else mol_log_prob(x, logits, dist)
    recon_loss = -log_prob.sum() / (batch * dims)

    kl_per_group, avg_kl_per_group = [], []
    masks = [None] * len(posterior_stats) if variate_masks is None else variate_masks
    for post, prior, mask in zip(posterior_stats, prior_stats, masks, strict=True):
        kl = gaussian_kl((post[0].float(), post[1].float()), (prior[0].float(), prior[1].float()),
                           base, smoothing_beta)
        if mask is not None:
            kl = kl * torch.as_tensor(mask, dtype=kl.dtype, device=kl.device).view(1, -1, 1, 1)
        kl_per_group.append(kl.sum() / (batch * dims))
        avg_kl_per_group.append(kl.mean() / LN2)
    kl_per_group = torch.stack(kl_per_group)
    avg_kl_per_group = torch.stack(avg_kl_per_group)

    if use_gamma(hp, step):
        balance = avg_kl_per_group * LN2 if hp.loss.scaled_gamma else kl_per_group
        kl_loss = torch.sum(gamma_weights(global_batch_mean(balance, batch)) * kl_per_group)
    else:
        kl_loss = kl_per_group.sum()
    beta = 1.0 if step is None else kl_beta(hp, step)

    to_report = report_units_per_nat_per_dim(hp)
    recon_report = recon_loss * to_report
    kl_div = kl_per_group.sum() * to_report
    return LossOutput(
        loss=recon_loss + beta * kl_loss,
        recon_loss=recon_loss,
        kl_per_group=kl_per_group,
        avg_kl_per_group=avg_kl_per_group,
        kl_div=kl_div,
        recon_report=recon_report,
        nelbo=recon_report + kl_div,
        beta=beta,
    )


def kl_per_variate(hp, posterior_stats: Sequence[GaussianStats], prior_stats: Sequence[GaussianStats]) -> torch.Tensor:
    """(L, variates) KL in bits, averaged over batch and positions: one batch of div_stats."""
    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    widths = {post[0].shape[1] for post in posterior_stats}
    if len(widths) != 1:
        raise ValueError(f"div_stats needs the same number of variates in every group "
                         f"(model.down_latent_variates), got {sorted(widths)}")
    return torch.stack([
        gaussian_kl((post[0].float(), post[1].float()), (prior[0].float(), prior[1].float()),
                      base, smoothing_beta).mean(dim=(0, 2, 3)) / LN2
        for post, prior in zip(posterior_stats, prior_stats, strict=True)
    ])


def count_active_groups(avg_kl_per_group: torch.Tensor, threshold: float) -> int:
    """Latent groups whose average KL (bits per latent dim) reaches `threshold`."""
    return int((avg_kl_per_group >= threshold).sum().item())
