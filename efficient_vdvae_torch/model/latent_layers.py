"""Diagonal Gaussian latent heads (SPEC.md section 2, GaussianLatentLayer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from efficient_vdvae_torch.model.conv2d import Conv2d
from hparams.schema import DISTRIBUTION_BASES, unknown_choice

# (mean, std) in the 'std' base, (mean, logstd) in the 'logstd' base.
GaussianStats = tuple[torch.Tensor, torch.Tensor]



def beta_softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """log(1 + exp(beta * x)) / beta (linear above beta * x = 20, as nn.Softplus)."""
    return F.softplus(x, beta=beta)


def gaussian_std(stats: GaussianStats, base: str, smoothing_beta: float) -> torch.Tensor:
    """The standard deviation of a Gaussian given by its stats in either base."""
    return stats[1] if base == "std" else torch.exp(smoothing_beta * stats[1])


class GaussianLatentLayer(nn.Module):
    """1x1 conv to 2 * variates channels: (mean, raw scale), mean first."""

    def __init__(self, in_filters: int, variates: int, base: str, smoothing_beta: float):
        super().__init__()
        self.projection = Conv2d(in_filters, 2 * variates, 1)
        if base not in DISTRIBUTION_BASES:
            raise unknown_choice("model.distribution_base", base, DISTRIBUTION_BASES)
        self.base = base
        self.smoothing_beta = smoothing_beta

    def forward(self, x: torch.Tensor, prior_stats: GaussianStats | None = None) -> GaussianStats:
        """Stats of the distribution; `prior_stats` makes it residual to that prior (NVAE)."""
        mean, raw = torch.chunk(self.projection(x), 2, dim=1)
        if self.base == "std":
            scale = beta_softplus(raw, self.smoothing_beta)
            if prior_stats is not None:
                mean, scale = mean + prior_stats[0], scale * prior_stats[1]
        else:
            scale = raw
            if prior_stats is not None:
                mean, scale = mean + prior_stats[0], scale + prior_stats[1]
        return mean, scale

    def std(self, stats: GaussianStats) -> torch.Tensor:
        return gaussian_std(stats, self.base, self.smoothing_beta)

    def sample(self, stats: GaussianStats, temperature: float = 1.0, noise: torch.Tensor | None = None
               ) -> torch.Tensor:
        """z = mean + temperature * std * eps; `noise` supplies eps (tests), else eps ~ N(0, 1).

        Temperature 0 returns the mean itself (deterministic reconstruction).
        """
        mean = stats[0]
        if temperature == 0.0 and noise is None:
            return mean
        eps = torch.randn_like(mean) if noise is None else noise.to(dtype=mean.dtype, device=mean.device)
        return eps * (self.std(stats) * temperature) + mean
