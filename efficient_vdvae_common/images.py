"""Image files and grids: model-space arrays to uint8, PNG encoding, tiling.

Framework agnostic (numpy + Pillow). Arrays are channels-last: (H, W, C) for
one image, (N, H, W, C) for a batch; C is 1 (grayscale) or 3 (RGB).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image


def model_space_to_uint8(x: np.ndarray, binarized: bool = False) -> np.ndarray:
    """Map model-space pixels to 0..255 (SPEC section 5, "Saved images").

    Images in [-1, 1] become `round(x * 127.5 + 127.5)`; binarized MNIST
    ({0, 1} or probabilities in [0, 1]) becomes `x * 255`. Values outside the
    range are clipped, so a slightly out-of-range output cannot wrap around.
    """
    x = np.asarray(x, dtype=np.float64)
    scaled = x * 255.0 if binarized else x * 127.5 + 127.5
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}; convert with model_space_to_uint8 first")
    return image


def _to_pil(image: np.ndarray) -> Image.Image:
    image = _as_hwc(image)
    return Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (H, W), (H, W, 1) or (H, W, 3)."""
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 image as a PNG file, creating the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(image).save(path, format="PNG")


def make_grid(images: np.ndarray, n_cols: int | None = None, padding: int = 2,
              pad_value: int = 0) -> np.ndarray:
    """Tile a batch (N, H, W, C) into one image, row by row.

    `n_cols` defaults to ceil(sqrt(N)); missing cells of the last row and the
    `padding` pixels between and around the cells take `pad_value`.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("cannot make a grid of zero images")
    n_cols = n_cols or math.ceil(math.sqrt(n))
    n_rows = math.ceil(n / n_cols)
    grid = np.full((padding + n_rows * (h + padding), padding + n_cols * (w + padding), c),
                   pad_value, dtype=images.dtype)
    for index in range(n):
        row, col = divmod(index, n_cols)
        top, left = padding + row * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = images[index]
    return grid
