"""Pixel preprocessing of SPEC section 1, in numpy.

Images are channels-last uint8 arrays, (H, W, C) for one image. The functions
here are pure: randomness (flips, binarisation) comes in as a numpy Generator,
so a caller can make it deterministic per image and epoch.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from efficient_vdvae_common.architecture import MNIST_PADDING

# The aligned CelebA photographs are 178x218; the 64x64 protocol keeps this
# (left, top, right, bottom) box before resizing.
CELEBA_CROP_BOX = (15, 40, 163, 188)


def reduce_bits(images: np.ndarray, num_bits: float) -> np.ndarray:
    """Keep the top `num_bits` bits of 8-bit pixels: floor(x / 2^(8-n)) * 2^(8-n)."""
    if not 1 <= num_bits <= 8 or float(num_bits) != int(num_bits):
        raise ValueError(f"data.num_bits must be a whole number in [1, 8], got {num_bits}")
    step = 2 ** (8 - int(num_bits))
    return (np.asarray(images, dtype=np.uint8) // step * step).astype(np.uint8)


def scale_to_model_space(images: np.ndarray) -> np.ndarray:
    """Map 0..255 pixels to [-1, 1] as float32: (x - 127.5) / 127.5."""
    return ((np.asarray(images, dtype=np.float32) - 127.5) / 127.5).astype(np.float32)


def preprocess_pixels(image: np.ndarray, num_bits: float) -> np.ndarray:
    """Bit reduction then scaling: the model's input for one 8-bit image."""
    return scale_to_model_space(reduce_bits(image, num_bits))


def maybe_flip_horizontally(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror the width axis (axis -2 of HWC) with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def pad_mnist(image: np.ndarray) -> np.ndarray:
    """Pad a 28x28(xC) image with zeros to 32x32(xC)."""
    pad = MNIST_PADDING
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, widths)


def binarize(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli sample with p = pixel intensity in [0, 1], as float32 {0, 1}."""
    return (rng.random(probabilities.shape) < probabilities).astype(np.float32)


def to_mnist_model_space(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 MNIST digit -> binarized, padded 32x32x1 float32."""
    intensities = np.asarray(image, dtype=np.float32).reshape(image.shape[0], image.shape[1], -1) / 255.0
    return pad_mnist(binarize(intensities, rng))


def resize_image(image: Image.Image, resolution: int) -> Image.Image:
    """Bilinear resize to resolution x resolution (a no-op when already that size)."""
    if image.size == (resolution, resolution):
        return image
    return image.resize((resolution, resolution), resample=Image.BILINEAR)


def crop_celeba(image: Image.Image) -> Image.Image:
    """The CelebA-64 crop of an aligned 178x218 photograph."""
    return image.crop(CELEBA_CROP_BOX)
