"""The dataset sources of the original and what each one is (SPEC sections 1 and 12), stdlib only.

A source is data, not code: which on-disk format it uses and whether it is
binarized MNIST. The data readers (efficient_vdvae_common.data) and the model
arithmetic (efficient_vdvae_common.architecture) both read this table.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    storage: str  # 'official' (CIFAR-10/MNIST arrays from a library), 'npz' or 'folder'
    official_name: str | None = None  # the dataset's name in torchvision/tfds terms
    binarized: bool = False  # binarized MNIST: {0,1} pixels, padded to 32x32, no [-1,1] scaling
    crop_raw_celeba: bool = False
    model_input_shape: tuple[int, int, int] | None = None  # fixed (H, W, C) of the official sets
    channels: int | None = 3  # the images' channel count; None: the user's folder decides



SOURCES: dict[str, Source] = {
    "binarized_mnist": Source("official", official_name="mnist", binarized=True, model_input_shape=(32, 32, 1),
                              channels=1),
    "cifar-10": Source("official", official_name="cifar10", model_input_shape=(32, 32, 3)),
    "imagenet": Source("npz"),
    "celebA": Source("folder", crop_raw_celeba=True),
    "celebAHQ": Source("folder"),
    "ffhq": Source("folder"),
    "custom": Source("folder", channels=None),
}
