"""Convolution with the PyTorch original's "same" padding and Glorot init (SPEC.md section 2), NHWC."""
from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficient_vdvae_common.padding import as_pair, same_padding_pairs

IntPair = Union[int, tuple[int, int], list[int]]


def same_padding(kernel_size: IntPair, stride: int, odd_pixel_first: bool = True
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


def conv2d(features: int, kernel_size: IntPair, stride: int = 1, init_scale: float = 1.0,
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
