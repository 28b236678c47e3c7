"""One picture per synthesis run, shared by both frameworks (numpy + Pillow).

Besides its per-image files, reconstruction writes one grid of the first
images of the synthesis set, each row of targets above the row of their
reconstructions; generation writes one grid of samples per temperature
setting. Grids live in `logs-<name>/synthesis-images/grids/`:
`reconstruction.png` and `generation-<NN>_<setting>.png`.

Tiles are the uint8 images the per-image files hold, unscaled, laid out by
`efficient_vdvae_common.images.make_grid` (`GRID_PADDING` pixels of
`GRID_PAD_VALUE` between and around them); a grid stays under
`GRID_MAX_SIDE` pixels a side, so large images get fewer columns and rows.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from efficient_vdvae_common.atomic_files import atomic_binary_file
from efficient_vdvae_common.images import make_grid

GRID_COLUMNS = 8
GRID_ROWS = 8
GRID_PADDING = 2
GRID_PAD_VALUE = 0
GRID_MAX_SIDE = 4096
GRIDS_FOLDER = "grids"


def reconstruction_grid_path(reconstruction_dir: str | Path) -> Path:
    """`synthesis-images/grids/reconstruction.png` for `synthesis-images/reconstructed/`."""
    return Path(reconstruction_dir).parent / GRIDS_FOLDER / "reconstruction.png"


def generation_grid_path(generation_dir: str | Path, setting_folder: str) -> Path:
    """`synthesis-images/grids/generation-<setting folder>.png` for `synthesis-images/generated/`."""
    return Path(generation_dir).parent / GRIDS_FOLDER / f"generation-{setting_folder}.png"


def grid_layout(tile_height: int, tile_width: int) -> tuple[int, int]:
    """(columns, rows) of a grid of tiles this size: at most 8 x 8 and GRID_MAX_SIDE pixels a side."""
    def fitting(tile: int, most: int) -> int:
        return max(1, min(most, (GRID_MAX_SIDE - GRID_PADDING) // (tile + GRID_PADDING)))

    return fitting(tile_width, GRID_COLUMNS), fitting(tile_height, GRID_ROWS)


def _blank_like(image: np.ndarray) -> np.ndarray:
    return np.full_like(image, GRID_PAD_VALUE)


def reconstruction_grid(targets: np.ndarray, reconstructions: np.ndarray, n_cols: int) -> np.ndarray:
    """Targets and reconstructions (N, H, W, C) uint8 tiled in pairs of rows: a row of up to `n_cols`
    targets, then the row of their reconstructions; a short last pair is filled with blank tiles."""
    targets, reconstructions = np.asarray(targets), np.asarray(reconstructions)
    if targets.shape != reconstructions.shape or targets.ndim != 4 or len(targets) == 0:
        raise ValueError(f"expected targets and reconstructions of one shape (N>0, H, W, C), "
                         f"got {targets.shape} and {reconstructions.shape}")
    tiles = []
    for start in range(0, len(targets), n_cols):
        for row in (targets[start:start + n_cols], reconstructions[start:start + n_cols]):
            tiles.extend(row)
            tiles.extend(_blank_like(targets[0]) for _ in range(n_cols - len(row)))
    return make_grid(np.stack(tiles), n_cols=n_cols, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE)


def sample_grid(samples: np.ndarray, n_cols: int) -> np.ndarray:
    """Samples (N, H, W, C) uint8 tiled row by row, `n_cols` a row."""
    return make_grid(np.asarray(samples), n_cols=n_cols, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE)


def write_grid(path: str | Path, grid: np.ndarray) -> Path:
    """Write a uint8 grid as a PNG, atomically (a grid appears complete or not at all)."""
    grid = np.asarray(grid)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    with atomic_binary_file(path) as stream:
        stream.write(buffer.getvalue())
    # The temporary file was private (0600); give the grid the permissions of the per-image files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return Path(path)


class _Tiles:
    """The first `capacity` images given, capacity set by the first image's size."""

    def __init__(self, pairs: bool):
        self._pairs = pairs
        self._columns = 0
        self._capacity: int | None = None
        self._images: list[np.ndarray] = []

    @property
    def columns(self) -> int:
        """Columns of the grid: a run of fewer images than a row gets a narrower grid."""
        return min(self._columns, len(self._images))

    def add(self, images: Iterable[np.ndarray]) -> None:
        for image in images:
            if self._capacity is None:
                self._columns, rows = grid_layout(image.shape[0], image.shape[1])
                # A reconstruction grid shows each image twice (target, reconstruction).
                self._capacity = self._columns * (max(1, rows // 2) if self._pairs else rows)
            if len(self._images) >= self._capacity:
                return
            self._images.append(np.asarray(image))

    def stacked(self) -> np.ndarray:
        return np.stack(self._images)

    def __len__(self) -> int:
        return len(self._images)


class ReconstructionGrid:
    """Collects the first targets and reconstructions of a run, batch by batch; `write()` makes the grid."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._targets, self._outputs = _Tiles(pairs=True), _Tiles(pairs=True)

    def add(self, targets: Iterable[np.ndarray], reconstructions: Iterable[np.ndarray]) -> None:
        self._targets.add(targets)
        self._outputs.add(reconstructions)

    def write(self) -> Path | None:
        """The grid's path, or None when no image was added."""
        if len(self._targets) == 0:
            return None
        grid = reconstruction_grid(self._targets.stacked(), self._outputs.stacked(), self._targets.columns)
        return write_grid(self.path, grid)


class SampleGrid:
    """Collects the first samples of one temperature setting; `write()` makes the grid."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._samples = _Tiles(pairs=False)

    def add(self, samples: Iterable[np.ndarray]) -> None:
        self._samples.add(samples)

    def write(self) -> Path | None:
        """The grid's path, or None when no image was added."""
        if len(self._samples) == 0:
            return None
        return write_grid(self.path, sample_grid(self._samples.stacked(), self._samples.columns))
