"""SSIM against scikit-image's reference implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from efficient_vdvae_torch.model.ssim import ssim_metric, ssim_per_image


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_matches_skimage(channels):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(3, channels, 32, 24)).astype(np.float64)
    noisy = np.clip(clean + rng.normal(0, 40, size=clean.shape), 0, 255)
    noisy[2] = clean[2]  # identical pair: SSIM 1
    ours = ssim_per_image(torch.tensor(clean), torch.tensor(noisy)).numpy()
    expected = [skimage_ssim(a, b) for a, b in zip(clean, noisy)]
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert ours[2] == pytest.approx(1.0)


def test_metric_maps_model_space_to_pixels():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(2, 3, 16, 16)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, size=a.shape), 0, 255)
    scaled = [torch.tensor((v - 127.5) / 127.5, dtype=torch.float32) for v in (a, b)]
    expected = np.mean([skimage_ssim(x, y) for x, y in zip(a, b)])
    assert ssim_metric(*scaled) == pytest.approx(expected, rel=1e-5)


def test_images_smaller_than_the_window_have_no_ssim():
    x = torch.rand(3, 3, 8, 8) * 255
    assert torch.isnan(ssim_per_image(x, x)).all()
