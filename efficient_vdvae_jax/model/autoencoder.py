"""The Efficient-VDVAE autoencoder (SPEC.md sections 3 and 4), NHWC.

`model = UniversalAutoEncoder(hp)`; `variables = model.init(rng, x)`;
`logits, posterior_stats, prior_stats = model.apply(variables, rng, x)`;
`logits, zs = model.apply(variables, rng, batch_size, temperatures, method=model.sample_from_prior)`;
`logits = model.apply(variables, rng, latents, variate_masks, temperatures, method=model.decode)`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient_vdvae_common.architecture import (latent_resolutions, num_latent_groups, output_channels, prior_init_scale,
                                                 stable_init_scale, top_resolution, z_projection_init_scale)
from efficient_vdvae_common.initialization import initializer_scheme
from efficient_vdvae_common.temperatures import per_group_temperatures
from efficient_vdvae_jax.model.conv2d import conv2d
from efficient_vdvae_jax.model.layers import LevelBlockDown, LevelBlockUp


def compute_dtype(hp: Any) -> Any:
    """bfloat16 convolutions under `run.mixed_precision` (parameters and the loss stay float32)."""
    return jnp.bfloat16 if hp.run.mixed_precision else None


class BottomUp(nn.Module):
    """The encoder: emits one skip tensor per level, deepest first."""

    hp: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        m = self.hp.model
        in_filters = [m.input_conv_filters] + list(m.up_filters[:-1])
        dtype = compute_dtype(self.hp)
        x = conv2d(m.input_conv_filters, m.input_kernel_size, dtype=dtype, name="input_conv")(x)
        skips = []
        for i, stride in enumerate(m.up_strides):
            def level_block(stride: int, use_skip: bool, name: str) -> LevelBlockUp:
                return LevelBlockUp(m.up_n_blocks[i], m.up_n_layers[i], in_filters[i], m.up_filters[i],
                                    m.up_mid_filters_ratio[i], m.up_kernel_size[i], stride,
                                    m.up_skip_filters[i], use_skip, stable_init_scale(self.hp),
                                    m.use_1x1_conv, self.hp.run.gradient_checkpointing, dtype,
                                    initializer_scheme(self.hp, "jax"), name=name)

            for j in range(m.up_n_blocks_per_res[i]):
                x, _ = level_block(1, False, f"levels_up_{i}_{j}")(x)
            x, skip = level_block(stride, True, f"levels_up_downsample_{i}")(x)
            skips.append(skip)
        return skips[::-1]

def trainable_h_init(scheme: str) -> nn.initializers.Initializer:
    """Zeros (the JAX original), or uniform in +-sqrt(3 / (H*W*C)) as torch's
    kaiming_uniform(nonlinearity='linear') on the (1, C, H, W) tensor (the PyTorch original)."""
    if scheme == "flax":
        return nn.initializers.zeros

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        bound = math.sqrt(3.0 / math.prod(shape[1:]))
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class TopDown(nn.Module):
    """The decoder: latent groups from the learned start tensor `h` down to the output logits."""

    hp: Any

    def _blocks(self) -> list[tuple[int, LevelBlockDown]]:
        """(top-level index, block) in execution order."""
        m = self.hp.model
        skip_filters = list(m.up_skip_filters)[::-1]
        resolutions = latent_resolutions(self.hp)
        blocks = []
        for i, stride in enumerate(m.down_strides):
            def level_block(stride: int, name: str) -> LevelBlockDown:
                return LevelBlockDown(
                    n_blocks=m.down_n_blocks[i], n_layers=m.down_n_layers[i], filters=m.down_filters[i],
                    mid_ratio=m.down_mid_filters_ratio[i],
                    kernel_size=m.down_kernel_size[i], stride=stride, skip_filters=skip_filters[i],
                    variates=m.down_latent_variates[i], out_resolution=resolutions[i],
                    distribution_base=m.distribution_base,
                    gradient_smoothing_beta=m.gradient_smoothing_beta,
                    use_residual_distribution=m.use_residual_distribution,
                    prior_init_scale=prior_init_scale(self.hp),
                    cells_init_scale=stable_init_scale(self.hp),
                    z_projection_init_scale=z_projection_init_scale(self.hp),
                    use_1x1_conv=m.use_1x1_conv, checkpointed=self.hp.run.gradient_checkpointing,
                    dtype=compute_dtype(self.hp), initializer=initializer_scheme(self.hp, "jax"), name=name)

            blocks.append((i, level_block(stride, f"levels_down_upsample_{i}")))
            for j in range(m.down_n_blocks_per_res[i]):
                blocks.append((i, level_block(1, f"levels_down_{i}_{j}")))
        return blocks

    @nn.compact
    def __call__(self, skips: Sequence[jax.Array] | None, batch_size: int, rng: jax.Array, *,
                 temperatures: Sequence, noise: Sequence[jax.Array] | None = None,
                 variate_masks: Sequence[jax.Array] | None = None,
                 latents: Sequence[jax.Array] | None = None
                 ) -> tuple[jax.Array, list, list, list]:
        m = self.hp.model
        h0 = top_resolution(self.hp)
        trainable_h = self.param("trainable_h", trainable_h_init(initializer_scheme(self.hp, "jax")),
                                 (1, h0, h0, m.down_filters[0]))
        y = jnp.tile(trainable_h, (batch_size, 1, 1, 1))
        blocks = self._blocks()
        rngs = jax.random.split(rng, len(blocks))
        posteriors, priors, zs = [], [], []
        for g, (level, block) in enumerate(blocks):
            y, posterior, prior, z = block(
                y, None if skips is None else skips[level], rngs[g], temperature=temperatures[g],
                noise=None if noise is None else noise[g],
                variate_mask=None if variate_masks is None else variate_masks[g],
                latent=None if latents is None else latents[g])
            posteriors.append(posterior)
            priors.append(prior)
            zs.append(z)
        logits = conv2d(output_channels(self.hp), m.output_kernel_size, dtype=compute_dtype(self.hp),
                        name="output_conv")(y)
        return logits, posteriors, priors, zs


class UniversalAutoEncoder(nn.Module):
    """Bottom-up encoder + top-down decoder with one latent group per top-down block."""

    hp: Any

    def setup(self) -> None:
        self.bottom_up = BottomUp(self.hp)
        self.top_down = TopDown(self.hp)

    def init(self, rng: jax.Array, x: jax.Array, **kwargs) -> Any:  # type: ignore[override]
        """`model.init(rng, x)`: the key seeds the parameters and the init pass's noise."""
        return super().init(rng, rng, x, **kwargs)

    def __call__(self, rng: jax.Array, x: jax.Array, variate_masks: Sequence[jax.Array] | None = None,
                 posterior_temperature: float | jax.Array = 1.0,
                 noise: Sequence[jax.Array] | None = None) -> tuple[jax.Array, list, list]:
        """(logits, posterior stats, prior stats) for `x` (B, H, W, C); stats per group in top-down order.

        variate_masks: None, or L arrays of shape (variates,) in {0, 1} (None entries leave a group
        unmasked): masked-off variates take a prior sample. posterior_temperature scales the
        posterior std (0: the means). noise: optional L standard-normal posterior eps (NHWC).
        """
        res, channels = self.hp.data.target_res, self.hp.data.channels
        if x.ndim != 4 or x.shape[1:] != (res, res, channels):
            raise ValueError(f"x must be (B, {res}, {res}, {channels}) (NHWC, data.target_res and data.channels), "
                             f"got shape {x.shape}")
        n_groups = num_latent_groups(self.hp)
        for name, values in (("variate_masks", variate_masks), ("noise", noise)):
            if values is not None and len(values) != n_groups:
                raise ValueError(f"{name} needs one entry per latent group ({n_groups}), got {len(values)}")
        skips = self.bottom_up(x)
        logits, posteriors, priors, _ = self.top_down(
            skips, x.shape[0], rng, temperatures=[posterior_temperature] * n_groups, noise=noise,
            variate_masks=variate_masks)
        return logits, posteriors, priors

    def sample_from_prior(self, rng: jax.Array, batch_size: int, temperatures: float | Sequence[float] = 1.0,
                          noise: Sequence[jax.Array] | None = None) -> tuple[jax.Array, list]:
        """Generate: logits and each group's z, with one temperature per top-level block (or one for all).

        (efficient_vdvae_common.temperatures expands config entries into such lists.)
        """
        group_temperatures = per_group_temperatures(temperatures, self.hp.model.down_n_blocks_per_res)
        logits, _, _, zs = self.top_down(None, batch_size, rng, noise=noise, temperatures=group_temperatures)
        return logits, zs

    def decode(self, rng: jax.Array, latents: Sequence[jax.Array], variate_masks: Sequence[jax.Array],
               temperatures: float | Sequence[float] = 1.0) -> jax.Array:
        """Logits of images from given latents (decoding mode, SPEC.md section 8).

        latents: L arrays (B, H, W, variates), one per group in top-down order;
        variate_masks: L arrays (variates,) in {0, 1}: where 1 the group's z is
        the given latent, where 0 a prior sample at the group's top-level block's
        temperature (one temperature per top-level block, or one for all).
        """
        n_groups = num_latent_groups(self.hp)
        if len(latents) != n_groups or len(variate_masks) != n_groups:
            raise ValueError(f"expected {n_groups} latents and variate masks (one per latent group), "
                             f"got {len(latents)} and {len(variate_masks)}")
        group_temperatures = per_group_temperatures(temperatures, self.hp.model.down_n_blocks_per_res)
        logits, _, _, _ = self.top_down(None, latents[0].shape[0], rng, variate_masks=variate_masks,
                                        latents=latents, temperatures=group_temperatures)
        return logits
