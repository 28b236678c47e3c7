"""Where the inference modes write and what they print, shared by both frameworks (SPEC.md sections 8, 9).

Everything lives in the run's `logs-<name>/` folder:

- `synthesis-images/reconstructed/<image stem>.png` (and `<stem>-target.png`),
- `synthesis-images/generated/<NN>_<setting>/image-0000.png`, ...,
- `div_stats.npy`,
- `latents/encodings.npz`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from efficient_vdvae_common.data.readers import IMAGE_EXTENSIONS
from efficient_vdvae_common.encodings import ENCODINGS_FILENAME
from efficient_vdvae_common.variate_masks import DIV_STATS_FILENAME, variate_masks


def reconstruction_dir(run_logs: str | Path) -> Path:
    return Path(run_logs) / "synthesis-images" / "reconstructed"


def generation_dir(run_logs: str | Path) -> Path:
    return Path(run_logs) / "synthesis-images" / "generated"


def div_stats_path(run_logs: str | Path) -> Path:
    return Path(run_logs) / DIV_STATS_FILENAME


def encodings_path(run_logs: str | Path) -> Path:
    return Path(run_logs) / "latents" / ENCODINGS_FILENAME


def image_stem(name: str) -> str:
    """A data set name without its image extension (array-file names have none)."""
    path = Path(name)
    return path.with_suffix("").as_posix() if path.suffix.lower() in IMAGE_EXTENSIONS else name


def generated_image_name(index: int) -> str:
    return f"image-{index:04d}.png"


def temperature_folder_name(index: int, setting: Any) -> str:
    """A readable folder name per temperature_settings entry, e.g. `00_T-0.8`, `04_linear-0.7-0.9`."""
    if isinstance(setting, tuple):
        label = "-".join([str(setting[0])] + [f"{float(t):g}" for t in setting[1:]])
    elif isinstance(setting, list):
        label = "list-" + "-".join(f"{float(t):g}" for t in setting)
    else:
        label = f"T-{float(setting):g}"
    return f"{index:02d}_{label}"


@dataclass
class ReconstructionMetrics:
    """Means over the synthesis set (sums over images / image count), in report units
    (bits/dim; nats per image for binarized_mnist). `ssim` is None for binarized_mnist."""

    nelbo: float
    recon: float
    kl_div: float
    ssim: float | None
    num_images: int

    def summary(self) -> str:
        ssim = "" if self.ssim is None else f" | SSIM {self.ssim:.6f}"
        return (f"NELBO {self.nelbo:.6f} | reconstruction {self.recon:.6f} | KL {self.kl_div:.6f}{ssim}"
                f" | {self.num_images} images")


def div_stats_summary(hp: Any, div_stats: np.ndarray) -> str:
    """Active groups (mean KL per latent dim >= metrics.latent_active_threshold) and the masks' share."""
    groups, variates = div_stats.shape
    masks = variate_masks(div_stats, hp.synthesis.variate_masks_quantile)
    active = int(np.sum(div_stats.mean(axis=1) >= hp.metrics.latent_active_threshold))
    masked_groups = [g for g in range(groups) if masks[g].any()]
    return (f"div_stats ({groups} groups x {variates} variates): {active}/{groups} active groups; "
            f"{int(masks.sum())}/{masks.size} variates ({masks.mean():.2%}) above the "
            f"{1 - hp.synthesis.variate_masks_quantile:g} quantile, in groups {masked_groups}")
