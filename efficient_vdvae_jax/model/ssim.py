"""Structural similarity (SPEC.md section 7), NHWC: Gaussian window, no padding.

Matches skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255), per channel and averaged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian (size, size)."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_per_image(x: jax.Array, y: jax.Array, data_range: float = 255.0, window_size: int = 11,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> jax.Array:
    """Mean SSIM of each image pair (B,), images (B, H, W, C) with H, W >= window_size."""
    if x.shape != y.shape:
        raise ValueError(f"ssim: images of different shapes {x.shape} and {y.shape}")
    channels = x.shape[-1]
    window = jnp.asarray(np.tile(gaussian_window(window_size, sigma)[:, :, None, None], (1, 1, 1, channels)),
                         x.dtype)

    def blur(t: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(t, window, (1, 1), "VALID", feature_group_count=channels,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    mu_x, mu_y = blur(x), blur(y)
    # (Co)variances do not change when each image is shifted by its mean; shifting first keeps
    # E[x^2] - E[x]^2 from cancelling away float32 digits on a 0..255 range.
    xc = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    yc = y - jnp.mean(y, axis=(1, 2), keepdims=True)
    mu_xc, mu_yc = blur(xc), blur(yc)
    var_x = blur(xc * xc) - mu_xc * mu_xc
    var_y = blur(yc * yc) - mu_yc * mu_yc
    cov_xy = blur(xc * yc) - mu_xc * mu_yc
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))

