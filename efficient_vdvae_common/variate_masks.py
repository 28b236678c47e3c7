"""Variate masks from divergence statistics (SPEC.md sections 4 and 8).

`div_stats` is an (L, variates) array: per latent group and variate, the KL
between posterior and prior in bits, averaged over images and positions. The
variates whose KL lies strictly above the `1 - quantile` quantile of ALL
entries stay on (about the top `quantile` fraction; 1 keeps all); masked-off variates are
replaced by prior samples in masked reconstruction and left out of encodings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from efficient_vdvae_common.atomic_files import atomic_binary_file

DIV_STATS_FILENAME = "div_stats.npy"


class DivStatsError(ValueError):
    """A div_stats file that is missing or does not fit the model; the message names the file."""


def variate_masks(div_stats: np.ndarray, quantile: float) -> np.ndarray:
    """Boolean (L, variates) masks: True where div_stats > quantile(div_stats, 1 - quantile).

    The threshold uses numpy's default (linear interpolation) quantile over all entries.
    `quantile` 1 keeps every variate (the strict '>' alone would drop the smallest).
    """
    div_stats = np.asarray(div_stats)
    if div_stats.ndim != 2:
        raise ValueError(f"div_stats must be (groups, variates), got shape {div_stats.shape}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"synthesis.variate_masks_quantile must be in [0, 1], got {quantile}")
    if quantile == 1.0:
        return np.ones(div_stats.shape, bool)
    return div_stats > np.quantile(div_stats, 1.0 - quantile)


def save_div_stats(path: str | Path, div_stats: np.ndarray) -> None:
    """Write `div_stats` as a float32 .npy file atomically (readers see the old file or the new one)."""
    with atomic_binary_file(path) as stream:
        np.save(stream, np.asarray(div_stats, dtype=np.float32), allow_pickle=False)


def load_div_stats(path: str | Path, num_groups: int, num_variates: int) -> np.ndarray:
    """The (num_groups, num_variates) div_stats saved at `path`, checked against the model.

    Raises DivStatsError naming the file when it is missing, unreadable, of
    another shape (a different model) or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise DivStatsError(f"no div_stats file at {path}: run synthesize.py with "
                            "synthesis.synthesis_mode=div_stats first")
    try:
        div_stats = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DivStatsError(f"cannot read div_stats file {path}: {error}") from None
    expected = (num_groups, num_variates)
    if div_stats.shape != expected:
        raise DivStatsError(f"div_stats file {path} has shape {div_stats.shape}, this model needs {expected} "
                            "(latent groups, variates): recompute it with synthesis_mode=div_stats")
    if not np.all(np.isfinite(div_stats)):
        raise DivStatsError(f"div_stats file {path} holds non-finite values")
    return div_stats
