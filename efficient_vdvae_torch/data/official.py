"""CIFAR-10 and MNIST through torchvision, downloaded once into a data folder.

Layout under `data_dir` (torchvision's own): `cifar-10/cifar-10-batches-py/`
(python pickles) and `mnist/MNIST/raw/` (idx files).
"""
from __future__ import annotations

import functools
import os
from urllib.error import URLError

import numpy as np
from torchvision.datasets import CIFAR10, MNIST

from efficient_vdvae_common.data import DataError, OfficialImages

_DATASETS = {"cifar10": (CIFAR10, "cifar-10"), "mnist": (MNIST, "mnist")}


@functools.lru_cache(maxsize=4)
def load_official_images(name: str, data_dir: str, download: bool) -> OfficialImages:
    """The official train and test images (uint8, NHWC, official file order)."""
    dataset_class, folder = _DATASETS[name]
    root = os.path.join(data_dir, folder)
    try:
        train = dataset_class(root, train=True, download=download)
        test = dataset_class(root, train=False, download=download)
    except (RuntimeError, OSError, URLError) as error:
        how = "the download failed" if download else "downloading is disabled"
        raise DataError(
            f"{name} is not in {os.path.abspath(root)} (torchvision layout) and {how}: {error}. "
            f"Run once with network access, or copy the files there (data folder: data.download_dir)."
        ) from None
    return OfficialImages(_as_nhwc(train.data), _as_nhwc(test.data))


def _as_nhwc(data) -> np.ndarray:
    array = np.asarray(data, dtype=np.uint8)  # MNIST gives a torch tensor, CIFAR-10 a numpy array
    return array[..., None] if array.ndim == 3 else array
