"""The hierarchical VAE: bottom-up encoder, top-down decoder (SPEC.md sections 3 and 4)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from efficient_vdvae_common.architecture import (latent_resolutions, num_latent_groups, num_levels, output_channels,
                                                 top_resolution)
from efficient_vdvae_common.initialization import initializer_scheme
from efficient_vdvae_common.temperatures import per_group_temperatures
from efficient_vdvae_torch.model.conv2d import Conv2d
from efficient_vdvae_torch.model.latent_layers import GaussianStats
from efficient_vdvae_torch.model.layers import LevelBlockDown, LevelBlockUp
from efficient_vdvae_torch.model.output_distribution import OutputDistribution, sample_output


class BottomUp(nn.Module):
    """Encoder: returns one skip tensor per level, deepest (lowest resolution) first."""

    def __init__(self, hp):
        super().__init__()
        m = hp.model
        in_filters = [m.input_conv_filters] + list(m.up_filters[:-1])
        self.levels_up = nn.ModuleList([
            nn.ModuleList([LevelBlockUp(hp, i, in_filters[i], stride=1, use_skip=False)
                           for _ in range(m.up_n_blocks_per_res[i])])
            for i in range(len(m.up_strides))
        ])
        self.levels_up_downsample = nn.ModuleList([
            LevelBlockUp(hp, i, in_filters[i], stride=stride, use_skip=True) for i, stride in enumerate(m.up_strides)
        ])
        self.input_conv = Conv2d(hp.data.channels, m.input_conv_filters, m.input_kernel_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_conv(x)
        skips = []
        for level, skip_level in zip(self.levels_up, self.levels_up_downsample):
            for block in level:
                x, _ = block(x)
            x, skip = skip_level(x)
            skips.append(skip)
        return skips[::-1]


class TopDown(nn.Module):
    """Decoder: latent groups from the lowest resolution up, then the output conv."""

    def __init__(self, hp):
        super().__init__()
        m = hp.model
        resolutions = latent_resolutions(hp)
        start = top_resolution(hp)
        self.trainable_h = nn.Parameter(torch.zeros(1, m.down_filters[0], start, start))
        if initializer_scheme(hp, "torch") == "torch":  # the JAX original starts from zeros
            nn.init.kaiming_uniform_(self.trainable_h, nonlinearity="linear")

        in_filters = [m.down_filters[0]] + list(m.down_filters[:-1])
        self.levels_down_upsample = nn.ModuleList([
            LevelBlockDown(hp, i, in_filters[i], stride, resolutions[i]) for i, stride in enumerate(m.down_strides)
        ])
        self.levels_down = nn.ModuleList([
            nn.ModuleList([LevelBlockDown(hp, i, m.down_filters[i], 1, resolutions[i])
                           for _ in range(m.down_n_blocks_per_res[i])])
            for i in range(len(m.down_strides))
        ])
        self.output_conv = Conv2d(m.down_filters[-1], output_channels(hp), m.output_kernel_size)

    def _blocks(self):
        """(top-level index, block) in execution order."""
        for i, (first, followers) in enumerate(zip(self.levels_down_upsample, self.levels_down)):
            yield i, first
            for block in followers:
                yield i, block

    def forward(self, skips: list[torch.Tensor], posterior_temperature: float = 1.0,
                variate_masks: Sequence[torch.Tensor | None] | None = None,
                noise: Sequence[torch.Tensor] | None = None, prior_noise: Sequence[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[GaussianStats], list[GaussianStats]]:
        y = self.trainable_h.expand(skips[0].shape[0], -1, -1, -1)
        posterior_stats, prior_stats = [], []
        for g, (i, block) in enumerate(self._blocks()):
            y, post, prior = block(skips[i], y, posterior_temperature,
                                   variate_mask=None if variate_masks is None else variate_masks[g],
                                   noise=None if noise is None else noise[g],
                                   prior_noise=None if prior_noise is None else prior_noise[g])
            posterior_stats.append(post)
            prior_stats.append(prior)
        return self.output_conv(y), posterior_stats, prior_stats

    def sample_from_prior(self, batch_size: int, temperatures: Sequence[float],
                          noise: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`temperatures`: one per latent group (TopDown.decode too)."""
        y = self.trainable_h.expand(batch_size, -1, -1, -1)
        zs = []
        for g, (_, block) in enumerate(self._blocks()):
            y, z = block.sample_from_prior(y, temperatures[g], None if noise is None else noise[g])
            zs.append(z)
        return self.output_conv(y), zs

    def decode(self, latents: Sequence[torch.Tensor], variate_masks: Sequence[torch.Tensor],
               temperatures: Sequence[float], prior_noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        y = self.trainable_h.expand(latents[0].shape[0], -1, -1, -1)
        for g, (_, block) in enumerate(self._blocks()):
            y = block.decode(y, temperatures[g], latents[g], variate_masks[g],
                             None if prior_noise is None else prior_noise[g])
        return self.output_conv(y)


class UniversalAutoEncoder(nn.Module):
    """Efficient-VDVAE. Parameter names match the original PyTorch state_dict.

    `hp` comes from hparams.load_config, which has already checked that the
    model section is consistent (list lengths, strides, widths, skip filters).
    """

    def __init__(self, hp):
        super().__init__()
        self.num_groups = num_latent_groups(hp)
        self.num_levels = num_levels(hp)
        self.blocks_per_level = tuple(hp.model.down_n_blocks_per_res)
        self.output_distribution = OutputDistribution.from_hparams(hp)
        self.output_temperature = hp.synthesis.output_temperature
        self.bottom_up = BottomUp(hp)
        self.top_down = TopDown(hp)

    def forward(self, x: torch.Tensor, variate_masks: Sequence | None = None, posterior_temperature: float = 1.0,
                noise: Sequence[torch.Tensor] | None = None, prior_noise: Sequence[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[GaussianStats], list[GaussianStats]]:
        """(logits, posterior stats, prior stats), stats per latent group in top-down order.

        variate_masks: None, or L masks of shape (variates,) with values in {0, 1}
        (None entries leave a group unmasked): masked-off variates use a prior
        sample. posterior_temperature scales the posterior std (0: the means).
        noise: optional L standard-normal tensors used as the posterior eps; prior_noise: the same for
        the prior samples of masked-off variates (synthesis draws both per image).
        """
        masks = self._as_masks(variate_masks, x.device)
        if noise is not None and len(noise) != self.num_groups:
            raise ValueError(f"noise: expected {self.num_groups} tensors (one per latent group), got {len(noise)}")
        return self.top_down(self.bottom_up(x), posterior_temperature, masks, noise, prior_noise)

    def _as_masks(self, variate_masks, device) -> list[torch.Tensor | None] | None:
        if variate_masks is None:
            return None
        if len(variate_masks) != self.num_groups:
            raise ValueError(f"variate_masks: expected {self.num_groups} masks (one per latent group), "
                             f"got {len(variate_masks)}")
        return [None if m is None else torch.as_tensor(m, dtype=torch.float32, device=device)
                for m in variate_masks]

    @torch.no_grad()
    def sample_from_prior(self, batch_size: int, temperatures: Sequence[float] | float = 1.0,
                          noise: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, z per group): generation with one temperature per top-level block.

        A top-level block's temperature also applies to its followers
        (efficient_vdvae_common.temperatures expands config entries).
        """
        return self.top_down.sample_from_prior(batch_size, per_group_temperatures(temperatures, self.blocks_per_level),
                                               noise)

    @torch.no_grad()
    def decode(self, latents: Sequence[torch.Tensor], variate_masks: Sequence, temperatures: Sequence[float] | float,
               prior_noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of images from given latents (decoding mode, SPEC.md section 8).

        latents: L tensors (B, variates, H, W), one per group in top-down order;
        variate_masks: L masks (variates,) in {0, 1}: where 1 the group's z is
        the given latent, where 0 a prior sample at the group's top-level block's
        temperature (one temperature per top-level block, or one for all), its eps from
        `prior_noise` (L tensors shaped like `latents`) when given.
        """
        temperatures = per_group_temperatures(temperatures, self.blocks_per_level)
        if len(latents) != self.num_groups or len(variate_masks) != self.num_groups:
            raise ValueError(f"expected {self.num_groups} latents and variate masks (one per latent group), "
                             f"got {len(latents)} and {len(variate_masks)}")
        device = self.top_down.trainable_h.device
        return self.top_down.decode([torch.as_tensor(z, device=device) for z in latents],
                                    self._as_masks(variate_masks, device), temperatures, prior_noise)

    @torch.no_grad()
    def sample_output(self, logits: torch.Tensor, temperature: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images drawn from the output distribution (synthesis.output_temperature by default)."""
        temperature = self.output_temperature if temperature is None else temperature
        return sample_output(logits, self.output_distribution, temperature, generator)
