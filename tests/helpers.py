"""Helpers shared by the test folders."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

# A 16x16 model of ~11k parameters: tests run real steps on 2 shared CPU cores.
TINY_MODEL = (
    "data.target_res=16",
    "model.input_conv_filters=8",
    "model.up_strides=[1, 2, 1, 2, 1, 2, 1]",
    "model.down_strides=[1, 2, 1, 2, 1, 2, 1]",
    "model.up_filters=[8] * 7",
    "model.up_skip_filters=[8] * 7",
    "model.down_filters=[8] * 7",
    "model.down_latent_variates=[4] * 7",
    "model.num_output_mixtures=2",
)


# Two levels, three latent groups, 8 channels: the smallest model whose jitted
# gradients (JAX) compile in seconds. Add a data.target_res divisible by 4.
TWO_LEVEL_MODEL = (
    "model.input_conv_filters=8",
    "model.up_strides=[2, 2]",
    "model.up_n_blocks_per_res=[1, 0]",
    "model.up_n_blocks=[1, 1]",
    "model.up_n_layers=[1, 1]",
    "model.up_filters=[8, 8]",
    "model.up_mid_filters_ratio=[0.5, 0.5]",
    "model.up_kernel_size=[3, 3]",
    "model.up_skip_filters=[8, 8]",
    "model.down_strides=[2, 2]",
    "model.down_n_blocks_per_res=[1, 0]",
    "model.down_n_blocks=[1, 1]",
    "model.down_n_layers=[1, 1]",
    "model.down_filters=[8, 8]",
    "model.down_mid_filters_ratio=[0.5, 0.5]",
    "model.down_kernel_size=[3, 3]",
    "model.down_latent_variates=[4, 4]",
    "model.num_output_mixtures=2",
)


def write_random_pngs(folder: Path, names: Iterable[str], seed: int, size: int = 16) -> None:
    """Seeded random RGB PNGs `folder/<name>` (names may hold subfolders)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)


def numbered_pngs(count: int, prefix: str = "img_") -> list[str]:
    return [f"{prefix}{index:03d}.png" for index in range(count)]
