"""Convolutional building blocks (SPEC.md section 2), NHWC.

Submodule names mirror the original PyTorch state_dict keys (`convs_1` for
`convs.1`, `ops_0` for `ops.0`) so that checkpoint conversion is a mechanical
renaming (see efficient_vdvae_jax/convert_checkpoint.py).
"""
from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient_vdvae_common.padding import as_pair, same_padding_pairs

KernelSize = Union[int, tuple[int, int], list[int]]


def same_padding(kernel_size: KernelSize, stride: int, odd_pixel_first: bool = True
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)): `k - s` per axis, an odd total's extra pixel on the
    top/left (the PyTorch original's Conv2d) or, with `odd_pixel_first=False`, bottom/right.

    flax's 'SAME' always puts it bottom/right and depends on the input size, so pad explicitly.
    """
    return same_padding_pairs(kernel_size, stride, odd_pixel_first)


def scaled_glorot_uniform(scale: float) -> nn.initializers.Initializer:
    """Glorot uniform weights multiplied by `scale` once, at initialisation."""
    glorot = nn.initializers.xavier_uniform()

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return glorot(key, shape, dtype) * scale

    return init


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """torch's default conv bias: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / fan_in ** 0.5

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


# torch's default conv weight init, kaiming_uniform(a=sqrt(5)): uniform in +-1/sqrt(fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv2d(features: int, kernel_size: KernelSize, stride: int = 1, init_scale: float = 1.0,
           dtype: Any = None, name: str | None = None, odd_pixel_first: bool = True,
           torch_default_init_fan_in: int | None = None) -> nn.Conv:
    """A 'same'-padded convolution with Glorot weights (times `init_scale`) and zero biases.

    `dtype`: the computation dtype (bfloat16 for mixed precision); parameters stay float32.
    `odd_pixel_first`: see `same_padding`. `torch_default_init_fan_in`: when given, torch's
    default init instead (in_channels * kh * kw; a flax bias init does not see the input).
    """
    torch_default = torch_default_init_fan_in is not None
    return nn.Conv(
        features=features,
        kernel_size=as_pair(kernel_size),
        strides=(stride, stride),
        padding=same_padding(kernel_size, stride, odd_pixel_first),
        kernel_init=torch_default_kernel_init if torch_default else scaled_glorot_uniform(init_scale),
        bias_init=torch_default_bias_init(torch_default_init_fan_in) if torch_default else nn.initializers.zeros,
        dtype=dtype,
        name=name,
    )


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
    kernel_size: KernelSize
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
