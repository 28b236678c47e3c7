"""SSIM against scikit-image's standard definition (SPEC.md section 7)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from efficient_vdvae_jax.model.ssim import ssim_per_image


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=-1)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 32, 24, channels)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 25, size=x.shape), 0, 255)
    y[2] = rng.integers(0, 256, size=y[2].shape)  # an unrelated image: SSIM near 0
    expected = [skimage_ssim(a, b) for a, b in zip(x, y)]
    actual = ssim_per_image(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(actual, expected, atol=2e-5)

