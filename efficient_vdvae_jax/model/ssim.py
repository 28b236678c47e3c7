"""Structural similarity (SPEC.md section 7), NHWC: Gaussian window, no padding.

Matches skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255), per channel and averaged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_common.ssim import gaussian_window, ssim_map


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
    return jnp.mean(ssim_map(mu_x, mu_y, var_x, var_y, cov_xy, data_range, k1, k2), axis=(1, 2, 3))

