"""Structural similarity (SPEC.md section 7): Gaussian window, no padding.

Matches skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255), per channel and
averaged. (The original PyTorch code zero-padded the window; not copied.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from efficient_vdvae_common.ssim import gaussian_window, ssim_map


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0, window_size: int = 11,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of each image pair (B,), images (B, C, H, W).

    NaN for images smaller than the window, where SSIM is not defined.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: images of different shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window_size:
        return torch.full(x.shape[:1], float("nan"), dtype=torch.float64, device=x.device)
    # float64: E[x^2] - E[x]^2 on a 0..255 range loses digits in float32.
    x, y = x.double(), y.double()
    channels = x.shape[1]
    window = torch.as_tensor(gaussian_window(window_size, sigma), device=x.device).expand(channels, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov_xy = blur(x * y) - mu_x * mu_y
    return ssim_map(mu_x, mu_y, var_x, var_y, cov_xy, data_range, k1, k2).mean(dim=(1, 2, 3))


def ssim_metric(targets: torch.Tensor, outputs: torch.Tensor) -> float:
    """Batch-mean SSIM of images in the model's [-1, 1] space, measured on [0, 255]."""
    return ssim_per_image(targets * 127.5 + 127.5, outputs * 127.5 + 127.5).mean().item()
