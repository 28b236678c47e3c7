"""Convolutional building blocks (SPEC.md sections 2 to 4), NHWC.

Submodule names mirror the original PyTorch state_dict keys (`convs_1` for
`convs.1`, `ops_0` for `ops.0`) so that checkpoint conversion is a mechanical
renaming (see efficient_vdvae_jax/convert_checkpoint.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient_vdvae_common.padding import as_pair
from efficient_vdvae_jax.model.conv2d import IntPair, conv2d
from efficient_vdvae_jax.model.latent_layers import GaussianLatentLayer, GaussianStats, sample_gaussian


class ResidualConvCell(nn.Module):
    """silu -> conv sandwich: edge conv, `n_layers` k x k convs, edge conv; optional skip.

    The convs are named `convs_1`, `convs_3`, ... like the odd indices of the
    original's `convs` Sequential (its SiLUs sat at the even ones). `initializer`
    'torch' gives the first conv torch's default init (the PyTorch original),
    'flax' Glorot and zero bias like the other convs (the JAX original).
    """

    n_layers: int
    in_filters: int
    mid_ratio: float
    kernel_size: IntPair
    init_scale: float
    residual: bool
    out_ratio: float
    use_1x1_conv: bool
    dtype: Any = None
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mid = int(self.in_filters * self.mid_ratio)
        out = int(self.in_filters * self.out_ratio)
        edge_kernel = 1 if self.use_1x1_conv else self.kernel_size
        fan_in = self.in_filters * as_pair(edge_kernel)[0] * as_pair(edge_kernel)[1]
        # The PyTorch original built this first conv with torch's own init and padding='same'.
        h = conv2d(mid, edge_kernel, dtype=self.dtype, name="convs_1", odd_pixel_first=False,
                   torch_default_init_fan_in=fan_in if self.initializer == "torch" else None)(nn.silu(x))
        for i in range(self.n_layers):
            h = conv2d(mid, self.kernel_size, dtype=self.dtype, name=f"convs_{2 * i + 3}")(nn.silu(h))
        h = conv2d(out, edge_kernel, init_scale=self.init_scale, dtype=self.dtype,
                   name=f"convs_{2 * self.n_layers + 3}")(nn.silu(h))
        return x + h if self.residual else h


class PoolLayer(nn.Module):
    """Strided conv with kernel = stride (no padding), then leaky ReLU(0.1)."""

    out_filters: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv2d(self.out_filters, self.stride, stride=self.stride, dtype=self.dtype, name="ops_0")(x)
        return nn.leaky_relu(x, negative_slope=0.1)


class UnpoolLayer(nn.Module):
    """1x1 conv, leaky ReLU(0.1), nearest-neighbour upsampling, plus a learned per-position bias."""

    out_filters: int
    stride: int
    out_resolution: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv2d(self.out_filters, 1, dtype=self.dtype, name="ops_0")(x)
        x = nn.leaky_relu(x, negative_slope=0.1)
        x = jnp.repeat(jnp.repeat(x, self.stride, axis=1), self.stride, axis=2)
        scale_bias = self.param("scale_bias", nn.initializers.zeros,
                                (1, self.out_resolution, self.out_resolution, self.out_filters))
        return x + scale_bias.astype(x.dtype)


def residual_cell(checkpointed: bool) -> type[ResidualConvCell]:
    """The cell class; rematerialised (activations recomputed in the backward pass) when checkpointed."""
    return nn.remat(ResidualConvCell) if checkpointed else ResidualConvCell


class LevelBlockUp(nn.Module):
    """Residual cells, then (optionally) a skip projection, then (optionally) a strided pool."""

    n_blocks: int
    n_layers: int
    in_filters: int
    filters: int
    mid_ratio: float
    kernel_size: IntPair
    stride: int
    skip_filters: int
    use_skip: bool
    init_scale: float
    use_1x1_conv: bool
    checkpointed: bool = False
    dtype: Any = None
    initializer: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        for b in range(self.n_blocks):
            x = residual_cell(self.checkpointed)(
                self.n_layers, self.in_filters, self.mid_ratio, self.kernel_size, self.init_scale,
                residual=True, out_ratio=1.0, use_1x1_conv=self.use_1x1_conv, dtype=self.dtype,
                initializer=self.initializer, name=f"residual_block_{b}")(x)
        skip = conv2d(self.skip_filters, 1, dtype=self.dtype, name="skip_projection")(x) if self.use_skip else None
        if self.stride > 1:
            x = PoolLayer(self.filters, self.stride, dtype=self.dtype, name="pool")(x)
        return x, skip


class LevelBlockDown(nn.Module):
    """One latent group: (unpool), prior and posterior, sample z, project it in, residual cells.

    With `skip=None` it samples from the prior instead (generation), or, given
    `latent` and `variate_mask`, decodes: z is `latent` where the mask is 1.
    """

    n_blocks: int
    n_layers: int
    filters: int
    mid_ratio: float
    kernel_size: IntPair
    stride: int
    skip_filters: int
    variates: int
    out_resolution: int
    distribution_base: str
    gradient_smoothing_beta: float
    use_residual_distribution: bool
    prior_init_scale: float
    cells_init_scale: float
    z_projection_init_scale: float
    use_1x1_conv: bool
    checkpointed: bool = False
    dtype: Any = None
    initializer: str = "flax"

    def _sample(self, stats: GaussianStats, eps: jax.Array, temperature) -> jax.Array:
        return sample_gaussian(stats, self.distribution_base, self.gradient_smoothing_beta, eps, temperature)

    @nn.compact
    def __call__(self, y: jax.Array, skip: jax.Array | None, rng: jax.Array, *,
                 temperature: float | jax.Array = 1.0, noise: jax.Array | None = None,
                 variate_mask: jax.Array | None = None, latent: jax.Array | None = None
                 ) -> tuple[jax.Array, GaussianStats | None, GaussianStats, jax.Array]:
        if self.stride > 1:
            y = UnpoolLayer(self.filters, self.stride, self.out_resolution, dtype=self.dtype, name="unpool")(y)
        f = self.filters
        cell_class = residual_cell(self.checkpointed)
        cell = lambda in_filters, ratio, out_ratio, init_scale, name: cell_class(  # noqa: E731
            self.n_layers, in_filters, ratio, self.kernel_size, init_scale, residual=False,
            out_ratio=out_ratio, use_1x1_conv=self.use_1x1_conv, dtype=self.dtype,
            initializer=self.initializer, name=name)
        latent_layer = lambda name: GaussianLatentLayer(  # noqa: E731
            self.variates, self.distribution_base, self.gradient_smoothing_beta, dtype=self.dtype, name=name)

        kl_residual, y_prior = jnp.split(cell(f, self.mid_ratio, 2.0, self.prior_init_scale, "prior_net_0")(y),
                                         2, axis=-1)
        prior = latent_layer("prior_layer")(y_prior)
        posterior_rng, prior_rng = jax.random.split(rng)
        latent_shape = prior[0].shape
        if noise is None:
            noise = jax.random.normal(posterior_rng, latent_shape, jnp.float32)

        if skip is None:
            posterior = None
            z = self._sample(prior, noise, temperature)
            if latent is not None:
                # Decoding: the given z where the mask is 1 (the mix of masked inference below).
                z = variate_mask * latent + (1.0 - variate_mask) * z
        else:
            y_post = cell(f + self.skip_filters, self.mid_ratio * 0.5, 0.5, 1.0, "posterior_net_0")(
                jnp.concatenate([y, skip], axis=-1))
            posterior = latent_layer("posterior_layer")(
                y_post, prior if self.use_residual_distribution else None)
            z = self._sample(posterior, noise, temperature)
            if variate_mask is not None:
                prior_z = self._sample(prior, jax.random.normal(prior_rng, latent_shape, jnp.float32), 1.0)
                z = variate_mask * z + (1.0 - variate_mask) * prior_z

        y = y + kl_residual
        y = y + conv2d(f, 1, init_scale=self.z_projection_init_scale, dtype=self.dtype, name="z_projection")(z)
        for b in range(self.n_blocks):
            y = cell_class(self.n_layers, f, self.mid_ratio, self.kernel_size, self.cells_init_scale,
                           residual=True, out_ratio=1.0, use_1x1_conv=self.use_1x1_conv, dtype=self.dtype,
                           initializer=self.initializer, name=f"residual_block_{b}")(y)
        return y, posterior, prior, z
