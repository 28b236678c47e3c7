"""Convolutional building blocks of Efficient-VDVAE (SPEC.md sections 2 to 4).

Module and attribute names reproduce the original PyTorch state_dict keys
(SPEC.md section 10), so weights saved by the original load with strict=True.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from efficient_vdvae_common.architecture import prior_init_scale, stable_init_scale, z_projection_init_scale
from efficient_vdvae_common.initialization import initializer_scheme
from efficient_vdvae_torch.model.conv2d import Conv2d, IntPair
from efficient_vdvae_torch.model.latent_layers import GaussianLatentLayer, GaussianStats


class ResidualConvCell(nn.Module):
    """Bottleneck cell: (SiLU, conv) repeated n_layers + 2 times, optional residual.

    The convs sit at the odd indices of `convs` (SiLUs at the even ones), as in
    the original's state_dict. The last conv's weights are scaled by
    `init_scale` once at construction. `initializer` 'torch' gives the first
    conv torch's default init (the PyTorch original), 'flax' Glorot and zero
    bias like the other convs (the JAX original).
    """

    def __init__(self, n_layers: int, in_filters: int, mid_ratio: float, kernel_size: IntPair,
                 init_scale: float, residual: bool = True, use_1x1_conv: bool = True, out_ratio: float = 1.0,
                 checkpointed: bool = False, initializer: str = "torch"):
        super().__init__()
        if residual and out_ratio != 1.0:
            raise ValueError(f"a residual cell must keep its width (out_ratio={out_ratio})")
        self.residual = residual
        self.checkpointed = checkpointed
        mid_filters = int(in_filters * mid_ratio)
        out_filters = int(in_filters * out_ratio)
        outer_kernel = 1 if use_1x1_conv else kernel_size

        # The PyTorch original built this first conv with torch's own init and padding='same'.
        layers: list[nn.Module] = [nn.SiLU(), Conv2d(in_filters, mid_filters, outer_kernel,
                                                     default_init=initializer == "torch", odd_pixel_first=False)]
        for _ in range(n_layers):
            layers += [nn.SiLU(), Conv2d(mid_filters, mid_filters, kernel_size)]
        layers += [nn.SiLU(), Conv2d(mid_filters, out_filters, outer_kernel)]
        with torch.no_grad():
            layers[-1].weight.mul_(init_scale)
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            h = checkpoint(self.convs, x, use_reentrant=False)
        else:
            h = self.convs(x)
        return x + h if self.residual else h


class LeakyReLU(nn.Module):
    """x if x >= 0 else slope * x, with gradient 1 at exactly 0 (as flax's leaky_relu).

    torch's nn.LeakyReLU has gradient `slope` at 0. Exact zeros reach the unpool
    layers when trainable_h starts at zero (the 'flax' initializer), so the
    two frameworks would otherwise train differently from the same weights.
    """

    def __init__(self, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.negative_slope)


class PoolLayer(nn.Module):
    """Strided conv (kernel = stride, no padding) then leaky ReLU (slope 0.1)."""

    def __init__(self, in_filters: int, filters: int, stride: int):
        super().__init__()
        self.ops = nn.Sequential(Conv2d(in_filters, filters, stride, stride), LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class UnpoolLayer(nn.Module):
    """1x1 conv, leaky ReLU (0.1), nearest upsampling, plus a learned per-position bias.

    The bias has shape (1, filters, out_resolution, out_resolution) and is
    created here (the original created it lazily on the first forward pass).
    """

    def __init__(self, in_filters: int, filters: int, stride: int, out_resolution: int):
        super().__init__()
        self.ops = nn.Sequential(
            Conv2d(in_filters, filters, 1),
            LeakyReLU(0.1),
            nn.Upsample(scale_factor=stride, mode="nearest"),
        )
        self.scale_bias = nn.Parameter(torch.zeros(1, filters, out_resolution, out_resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x) + self.scale_bias


def _residual_stack(hp, n_blocks: int, n_layers: int, filters: int, ratio: float,
                    kernel_size: IntPair) -> nn.Sequential:
    return nn.Sequential(*[
        ResidualConvCell(n_layers, filters, ratio, kernel_size, init_scale=stable_init_scale(hp),
                         use_1x1_conv=hp.model.use_1x1_conv, checkpointed=hp.run.gradient_checkpointing,
                         initializer=initializer_scheme(hp, "torch"))
        for _ in range(n_blocks)
    ])


class LevelBlockUp(nn.Module):
    """Bottom-up block of level i: residual cells, optional skip projection, optional pooling."""

    def __init__(self, hp, level: int, in_filters: int, stride: int, use_skip: bool):
        super().__init__()
        m = hp.model
        self.residual_block = _residual_stack(hp, m.up_n_blocks[level], m.up_n_layers[level], in_filters,
                                              m.up_mid_filters_ratio[level], m.up_kernel_size[level])
        if use_skip:
            self.skip_projection = Conv2d(in_filters, m.up_skip_filters[level], 1)
        if stride > 1:
            self.pool = PoolLayer(in_filters, m.up_filters[level], stride)
        self.use_skip = use_skip
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.residual_block(x)
        skip = self.skip_projection(x) if self.use_skip else None  # taken before pooling
        if self.stride > 1:
            x = self.pool(x)
        return x, skip


class LevelBlockDown(nn.Module):
    """Top-down block: prior and posterior over one latent group, then residual cells."""

    def __init__(self, hp, level: int, in_filters: int, stride: int, out_resolution: int):
        super().__init__()
        m = hp.model
        filters = m.down_filters[level]
        skip_filters = m.up_skip_filters[::-1][level]
        variates = m.down_latent_variates[level]
        kernel, n_layers, ratio = m.down_kernel_size[level], m.down_n_layers[level], m.down_mid_filters_ratio[level]
        if stride > 1:
            self.unpool = UnpoolLayer(in_filters, filters, stride, out_resolution)
        self.stride = stride

        self.residual_block = _residual_stack(hp, m.down_n_blocks[level], n_layers, filters, ratio, kernel)
        self.posterior_net = nn.Sequential(ResidualConvCell(
            n_layers, filters + skip_filters, ratio * 0.5, kernel, init_scale=1.0, residual=False,
            use_1x1_conv=m.use_1x1_conv, out_ratio=0.5, checkpointed=hp.run.gradient_checkpointing,
            initializer=initializer_scheme(hp, "torch")))
        self.prior_net = nn.Sequential(ResidualConvCell(
            n_layers, filters, ratio, kernel, init_scale=prior_init_scale(hp),
            residual=False, use_1x1_conv=m.use_1x1_conv, out_ratio=2.0,
            checkpointed=hp.run.gradient_checkpointing, initializer=initializer_scheme(hp, "torch")))
        self.prior_layer = GaussianLatentLayer(filters, variates, m.distribution_base, m.gradient_smoothing_beta)
        self.posterior_layer = GaussianLatentLayer(filters, variates, m.distribution_base, m.gradient_smoothing_beta)
        self.z_projection = Conv2d(variates, filters, 1)
        with torch.no_grad():
            self.z_projection.weight.mul_(z_projection_init_scale(hp))
        self.use_residual_distribution = m.use_residual_distribution

    def _prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, GaussianStats]:
        if self.stride > 1:
            y = self.unpool(y)
        kl_residual, y_prior = torch.chunk(self.prior_net(y), 2, dim=1)
        return y, kl_residual, self.prior_layer(y_prior)

    def _merge(self, y: torch.Tensor, kl_residual: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + kl_residual
        y = y + self.z_projection(z)
        return self.residual_block(y)

    def forward(self, x_skip: torch.Tensor, y: torch.Tensor, posterior_temperature: float = 1.0,
                variate_mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                prior_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, GaussianStats, GaussianStats]:
        """One latent group of the inference pass; `noise` overrides the posterior's eps, `prior_noise` the
        eps of the masked-off variates' prior sample."""
        y, kl_residual, prior_stats = self._prior(y)
        y_post = self.posterior_net(torch.cat([y, x_skip], dim=1))
        posterior_stats = self.posterior_layer(
            y_post, prior_stats if self.use_residual_distribution else None)
        z = self.posterior_layer.sample(posterior_stats, posterior_temperature, noise)
        if variate_mask is not None:
            # Inference only: turned-off variates take a prior sample instead.
            z_prior = self.prior_layer.sample(prior_stats, 1.0, prior_noise)
            mask = variate_mask.to(dtype=z.dtype, device=z.device)[None, :, None, None]
            z = mask * z + (1.0 - mask) * z_prior
        return self._merge(y, kl_residual, z), posterior_stats, prior_stats

    def sample_from_prior(self, y: torch.Tensor, temperature: float, noise: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation: the same block without the posterior. Returns (y, z)."""
        y, kl_residual, prior_stats = self._prior(y)
        z = self.prior_layer.sample(prior_stats, temperature, noise)
        return self._merge(y, kl_residual, z), z

    def decode(self, y: torch.Tensor, temperature: float, latent: torch.Tensor, variate_mask: torch.Tensor,
               prior_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Decoding: z is `latent` where `variate_mask` is 1, a prior sample at `temperature` elsewhere.

        The mix is that of masked inference (forward), so a latent equal to the
        posterior mean gives the same y as reconstruction from posterior means.
        """
        y, kl_residual, prior_stats = self._prior(y)
        z_prior = self.prior_layer.sample(prior_stats, temperature, prior_noise)
        mask = variate_mask.to(dtype=z_prior.dtype, device=z_prior.device)[None, :, None, None]
        z = mask * latent.to(dtype=z_prior.dtype, device=z_prior.device) + (1.0 - mask) * z_prior
        return self._merge(y, kl_residual, z)
