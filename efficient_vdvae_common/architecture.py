"""The model's arithmetic from the config, framework-free: one place for both frameworks.

How many latent groups there are and at which resolution, the initial scales
of the residual, prior and z-projection convolutions, the output conv's width,
the pixel range, the dimensions the likelihood covers and its report units
(SPEC.md sections 1 to 5). Each framework builds its layers from these
numbers; nothing here needs a tensor.

Top-down order: level i (an entry of model.down_strides) has one first block
(which unpools) and model.down_n_blocks_per_res[i] followers; every top-down
block holds one latent group, so the groups of level i share its resolution.
"""
from __future__ import annotations

import math
from typing import Any

from efficient_vdvae_common.sources import SOURCES

LN2 = math.log(2.0)  # nats per bit

# Binarized MNIST: 28x28 digits zero-padded to 32x32; the likelihood and the
# written images cover only the centre.
MNIST_SIZE = 28
MNIST_PADDING = 2
MNIST_CROP = slice(MNIST_PADDING, MNIST_PADDING + MNIST_SIZE)
MNIST_PIXELS = MNIST_SIZE * MNIST_SIZE


def is_binarized_mnist(hp: Any) -> bool:
    """Whether data.dataset_source is binarized MNIST: a Bernoulli output, {0, 1} pixels, the 28x28 crop."""
    return SOURCES[hp.data.dataset_source].binarized


def num_levels(hp: Any) -> int:
    """The number of top-down resolution levels (top-level blocks): len(model.down_strides)."""
    return len(hp.model.down_strides)


def num_latent_groups(hp: Any) -> int:
    """L: one latent group per top-down block (each level's first block and its followers)."""
    return len(hp.model.down_strides) + sum(hp.model.down_n_blocks_per_res)


def group_levels(hp: Any) -> list[int]:
    """The level of each latent group, in top-down execution order."""
    return [level for level, followers in enumerate(hp.model.down_n_blocks_per_res)
            for _ in range(1 + followers)]


def top_resolution(hp: Any) -> int:
    """H0: the side of the learned start tensor of the top-down pass, before the first level's unpool."""
    return hp.data.target_res // math.prod(hp.model.down_strides)


def latent_resolutions(hp: Any) -> list[int]:
    """The side of each level's latents (after its unpool), from the top (lowest resolution) down."""
    resolution = top_resolution(hp)
    resolutions = []
    for stride in hp.model.down_strides:
        resolution *= stride
        resolutions.append(resolution)
    return resolutions


def group_shapes(hp: Any) -> list[tuple[int, int]]:
    """(variates, resolution) of every latent group in top-down order (followers share their level's)."""
    variates, resolutions = hp.model.down_latent_variates, latent_resolutions(hp)
    return [(variates[level], resolutions[level]) for level in group_levels(hp)]


def stable_init_scale(hp: Any) -> float:
    """Scale of every residual cell's last conv: sqrt(1/L) with model.stable_init, else 1."""
    return math.sqrt(1.0 / num_latent_groups(hp)) if hp.model.stable_init else 1.0


def prior_init_scale(hp: Any) -> float:
    """Scale of the prior net's last conv: 0 (the prior starts as N(0, 1)) with
    model.initialize_prior_weights_as_zero, else 1."""
    return 0.0 if hp.model.initialize_prior_weights_as_zero else 1.0


def z_projection_init_scale(hp: Any) -> float:
    """Scale of every z projection's weights: sqrt(1/L), with or without model.stable_init."""
    return math.sqrt(1.0 / num_latent_groups(hp))


def output_channels(hp: Any) -> int:
    """The output conv's width: 1 Bernoulli logit for binarized MNIST, else M * (3C + 1) mixture parameters."""
    if is_binarized_mnist(hp):
        return 1
    return hp.model.num_output_mixtures * (3 * hp.data.channels + 1)


def pixel_range(num_bits: float) -> tuple[float, float]:
    """(min_pix, max_pix): the model-space values of pixel 0 and of 255 after reduction to `num_bits` bits."""
    bin_size = 2 ** (8 - int(num_bits))
    top = (255 // bin_size) * bin_size
    return -1.0, (top - 127.5) / 127.5


def image_dims(hp: Any) -> int:
    """D: the image dimensions the likelihood covers: 784 for binarized MNIST (its crop), else H * W * C."""
    if is_binarized_mnist(hp):
        return MNIST_PIXELS
    return hp.data.target_res * hp.data.target_res * hp.data.channels


def report_units_per_nat_per_dim(hp: Any) -> float:
    """Factor from nats per image dimension to the units NELBO is reported in:
    nats per image (times 784) for binarized MNIST, else bits per dimension (divided by ln 2)."""
    return float(MNIST_PIXELS) if is_binarized_mnist(hp) else 1.0 / LN2
