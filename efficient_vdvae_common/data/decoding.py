"""Any image file to 8-bit grayscale or RGB pixels, or a one-line refusal naming the file.

Pillow's own `convert('L'/'RGB')` is right for most modes, but not for all:
it clips 16-bit grayscale to 255 (an almost white image) and maps 32-bit
float and integer pixels with no fixed scale. Here every mode gets an
explicit rule (SPEC section 1, "Image files"):
  - 16-bit grayscale (I;16*, and mode I from a PNG, which can only be 16-bit):
    the top 8 bits, v >> 8 (the inverse of the usual 8 -> 16 bit v * 257);
  - transparency (RGBA, LA, PA, palettes with a transparent colour): the
    alpha channel is dropped, as the originals' `convert('RGB')` drops it,
    so the pixels are the ones the published models saw; premultiplied
    RGBa/La keep their (already multiplied) colour;
  - 1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's conversions;
  - anything else (F float, I from other formats, signed 16-bit, ...): refused.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from efficient_vdvae_common.data.errors import CorruptImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
PREMULTIPLIED_MODES = ("RGBa", "La")
GRAY_MODES = ("1", "LA")
PILLOW_CONVERTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# What Pillow raises for truncated, broken or non-image files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _from_array(pixels: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W, 3) uint8 -> an 'L' or 'RGB' image."""
    return Image.fromarray(pixels[..., 0]) if pixels.shape[-1] == 1 else Image.fromarray(pixels)


def to_8bit(image: Image.Image, path: str | os.PathLike, source_format: str | None = None) -> Image.Image:
    """A decoded image as 8-bit 'L' (grayscale sources) or 'RGB' (colour sources).

    `source_format` is the file's format (Image.format), which tells a 16-bit
    PNG opened as mode I from a 32-bit integer image.
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and source_format == "PNG"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise CorruptImageError(f"image file {path}: mode {mode} pixels outside 0..65535")
        return Image.fromarray((values >> 8).astype(np.uint8))
    if mode in PREMULTIPLIED_MODES:
        return _from_array(np.asarray(image)[..., :-1])
    if mode in PILLOW_CONVERTED_MODES:
        return image.convert("L" if mode in GRAY_MODES else "RGB")
    raise CorruptImageError(
        f"image file {path}: pixel mode {mode} ({'32-bit float' if mode == 'F' else 'no fixed 8-bit scale'}) "
        "is not supported; save it as an 8-bit or 16-bit PNG or JPEG")


def _bomb_error(path: str | os.PathLike, detail: str) -> CorruptImageError:
    return CorruptImageError(f"image file {path}: {detail}, over Pillow's decompression-bomb limit of "
                             f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS); refused")


def _refuse_decompression_bomb(image: Image.Image, path: str | os.PathLike) -> None:
    width, height = image.size
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        raise _bomb_error(path, f"{width}x{height} = {width * height} pixels")


def open_8bit(path: str | os.PathLike, mode: str | None = None) -> Image.Image:
    """Read an image file fully and return it as 8-bit pixels.

    `mode` 'L' or 'RGB' forces the channels (colour to gray by ITU-R 601-2
    luma, as Pillow does); None keeps grayscale sources gray and the rest RGB.
    Every failure is a CorruptImageError whose one-line message names the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (no file named) above MAX_IMAGE_PIXELS; the size check below refuses instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _refuse_decompression_bomb(image, path)
                image.load()
                converted = to_8bit(image, path, image.format)
    except CorruptImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow refuses above twice the limit, before our check
        raise _bomb_error(path, f"more than 2 x {Image.MAX_IMAGE_PIXELS} pixels") from None
    except DECODE_ERRORS as error:
        raise CorruptImageError(f"cannot read image file {path}: {error}") from None
    if mode is not None and converted.mode != mode:
        converted = converted.convert(mode)
    return converted
