"""The objective: reconstruction, analytic KL, gamma balancing, beta warm-up (SPEC.md section 5)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed

from efficient_vdvae_common.architecture import LN2, image_dims, report_units_per_nat_per_dim
from efficient_vdvae_common.objective import LossOutput, gaussian_kl
from efficient_vdvae_common.output_distribution import OutputDistribution
from efficient_vdvae_torch.model.latent_layers import GaussianStats
from efficient_vdvae_torch.model.output_distribution import bernoulli_log_prob, mol_log_prob
from efficient_vdvae_torch.model.schedules import gamma_weights, kl_beta, use_gamma


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


def gamma_balanced_kl(hp, kl_per_group: torch.Tensor, avg_kl_per_group_nats: torch.Tensor, step: int | None,
                      batch: int) -> torch.Tensor:
    """The KL term: sum_g alpha_g * kl_g while balancing applies (NVAE), else sum_g kl_g.

    alpha = L * a / sum(a) (gamma_weights) weighs the groups by a, the per-latent-element
    average KL (nats) with loss.scaled_gamma, else the per-image-dim KL; a is averaged
    over the global batch (global_batch_mean).
    """
    if not use_gamma(hp, step):
        return kl_per_group.sum()
    balance = avg_kl_per_group_nats if hp.loss.scaled_gamma else kl_per_group
    return torch.sum(gamma_weights(global_batch_mean(balance, batch)) * kl_per_group)


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
    # Losses in float32 even under bf16 autocast.
    x, logits = x.float(), logits.float()
    batch = x.shape[0]
    dims = image_dims(hp)

    log_prob = bernoulli_log_prob(x, logits) if dist.bernoulli else mol_log_prob(x, logits, dist)
    recon_loss = -log_prob.sum() / (batch * dims)

    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    kls = [gaussian_kl((post[0].float(), post[1].float()), (prior[0].float(), prior[1].float()),
                       base, smoothing_beta, torch)
           for post, prior in zip(posterior_stats, prior_stats, strict=True)]
    if variate_masks is not None:
        kls = [kl if mask is None else kl * torch.as_tensor(mask, dtype=kl.dtype, device=kl.device).view(1, -1, 1, 1)
               for kl, mask in zip(kls, variate_masks, strict=True)]
    kl_per_group = torch.stack([kl.sum() for kl in kls]) / (batch * dims)
    avg_kl_nats = torch.stack([kl.mean() for kl in kls])
    kl_loss = gamma_balanced_kl(hp, kl_per_group, avg_kl_nats, step, batch)
    beta = 1.0 if step is None else kl_beta(hp, step)

    to_report = report_units_per_nat_per_dim(hp)
    recon_report = recon_loss * to_report
    kl_div = kl_per_group.sum() * to_report
    return LossOutput(
        loss=recon_loss + beta * kl_loss,
        recon_loss=recon_loss,
        kl_per_group=kl_per_group,
        avg_kl_per_group=avg_kl_nats / LN2,
        kl_div=kl_div,
        recon_report=recon_report,
        nelbo=recon_report + kl_div,
        beta=beta,
    )


def kl_per_variate(hp, posterior_stats: Sequence[GaussianStats], prior_stats: Sequence[GaussianStats]) -> torch.Tensor:
    """(B, L, variates) KL in bits per image, averaged over positions: the terms of div_stats (every group
    has the same number of variates: the config's validation asks it of the modes that compute this)."""
    base, smoothing_beta = hp.model.distribution_base, hp.model.gradient_smoothing_beta
    return torch.stack([
        gaussian_kl((post[0].float(), post[1].float()), (prior[0].float(), prior[1].float()),
                    base, smoothing_beta, torch).mean(dim=(2, 3)) / LN2
        for post, prior in zip(posterior_stats, prior_stats, strict=True)
    ], dim=1)


def count_active_groups(avg_kl_per_group: torch.Tensor, threshold: float) -> int:
    """Latent groups whose average KL (bits per latent dim) reaches `threshold`."""
    return int((avg_kl_per_group >= threshold).sum().item())
