"""The framework-free parts of SSIM (SPEC.md section 7): the Gaussian window and the SSIM map.

Each framework's model/ssim.py blurs with its own conv and averages the map;
the formula below needs only arithmetic, so it serves torch tensors and JAX arrays alike.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 2-D Gaussian (size, size), float64."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_map(mu_x: Any, mu_y: Any, var_x: Any, var_y: Any, cov_xy: Any, data_range: float,
             k1: float = 0.01, k2: float = 0.03) -> Any:
    """SSIM at each window position from the windowed means, variances and covariance."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
