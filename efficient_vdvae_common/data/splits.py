"""How each source of efficient_vdvae_common.sources is read and split (SPEC sections 1 and 12).

`build_split` turns a config and a split name into an
`ImageSplit`: a reader, the reader indices of the split in a fixed order, and
the preprocessing to apply (flips and dynamic binarisation only for 'train').
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from efficient_vdvae_common.data import preprocessing
from efficient_vdvae_common.data.ordering import per_rank_batch_size
from efficient_vdvae_common.data.readers import (
    ArrayReader,
    CorruptImageError,
    DataError,
    ImageFolderReader,
    ImageReader,
    NpzReader,
)
from efficient_vdvae_common.sources import SOURCES, Source

SPLITS = ("train", "val", "synthesis", "div_stats", "encode")
# Order of the official CIFAR-10 / MNIST test set; the first half is
# validation, the second half the test (synthesis) set.
OFFICIAL_TEST_PERMUTATION_SEED = 101
# Validation/test digits are binarized once: the same {0,1} images in every run.
FIXED_BINARIZATION_SEED = 1234
DIV_STATS_STREAM = 7  # separates the div_stats subset's random stream from the epochs'.
VALIDATION_SUBSET_STREAM = 8  # and the validation subset's.


class OfficialImages(NamedTuple):
    """The official train and test sets, uint8 (N, H, W, C), in the order of the official files."""

    train: np.ndarray
    test: np.ndarray


# A framework's way to get the official arrays (torchvision or tfds): (source name) -> arrays.
OfficialLoader = Callable[[str], OfficialImages]
# A framework's reader of the official datasets: (dataset name, data folder, download allowed) -> images.
OfficialReader = Callable[[str, str, bool], OfficialImages]


def get_source(hp: Any) -> Source:
    name = hp.data.dataset_source
    if name not in SOURCES:
        raise DataError(f"data.dataset_source: unknown source {name!r}; expected one of {sorted(SOURCES)}")
    source = SOURCES[name]
    configured = (hp.data.target_res, hp.data.target_res, hp.data.channels)
    if source.model_input_shape is not None and configured != source.model_input_shape:
        resolution, _, channels = source.model_input_shape
        raise DataError(f"data.dataset_source={name!r} needs data.target_res={resolution} and data.channels={channels}, "
                        f"got {hp.data.target_res} and {hp.data.channels}")
    return source


def _crop_if_raw_celeba(image):
    # The data script stores cropped images; raw 178x218 aligned photos are cropped here.
    return preprocessing.crop_celeba(image) if image.size == (178, 218) else image


def _folder_reader(hp: Any, key: str, source: Source) -> ImageFolderReader:
    return ImageFolderReader(
        getattr(hp.data, key),
        hp.data.target_res,
        hp.data.channels,
        what=f"data.{key}",
        transform=_crop_if_raw_celeba if source.crop_raw_celeba else None,
    )


def _path_key(split: str) -> str:
    return {"train": "train_data_path", "div_stats": "train_data_path", "encode": "train_data_path",
            "val": "val_data_path", "synthesis": "synthesis_data_path"}[split]


def official_test_indices(num_test: int, split: str, full_test_set: bool) -> np.ndarray:
    """Test-set indices of the val or synthesis split of CIFAR-10 / MNIST."""
    if split == "synthesis" and full_test_set:
        return np.arange(num_test)
    order = np.random.RandomState(OFFICIAL_TEST_PERMUTATION_SEED).permutation(num_test)
    half = num_test // 2
    return order[:half] if split == "val" else order[half:]


def div_stats_indices(num_train: int, ratio: float, seed: int) -> np.ndarray:
    """A fixed `ratio` subset of the train set, in increasing index order."""
    if not 0 < ratio <= 1:
        raise DataError(f"synthesis.div_stats_subset_ratio must be in (0, 1], got {ratio}")
    count = max(1, round(num_train * ratio))
    return np.sort(np.random.default_rng([seed, DIV_STATS_STREAM]).permutation(num_train)[:count])


def validation_indices(num_val: int, count: int, seed: int) -> np.ndarray:
    """Positions of the validation subset: the first `count` of a permutation seeded by `seed`
    (the same at every evaluation, on every rank and in both frameworks), so that a subset of a
    sorted folder is still representative; the whole split, in order, when it has at most `count`."""
    if count < 1:
        raise DataError(f"val.n_samples_for_validation must be at least 1, got {count}")
    if count >= num_val:
        return np.arange(num_val)
    return np.random.default_rng([seed, VALIDATION_SUBSET_STREAM]).permutation(num_val)[:count]


class ImageSplit:
    """The images of one split, preprocessed into the model's input space (HWC float32).

    `load(position, epoch)` is deterministic: the flip and the binarisation of
    a training image depend only on (seed, epoch, image), so any worker, rank
    or framework produces the same pixels.
    """

    def __init__(self, reader: ImageReader, indices: np.ndarray, *, training: bool, source: Source,
                 num_bits: float, flip: bool, seed: int, skip_corrupt: bool):
        self.reader = reader
        self.indices = np.asarray(indices, dtype=np.int64)
        self.training = training
        self.source = source
        self.num_bits = num_bits
        # Digits are never mirrored (the original's MNIST loader had no flip).
        self.flip = flip and training and not source.binarized
        self.seed = seed
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, position: int) -> str:
        return self.reader.name(int(self.indices[position]))

    def _read_pixels(self, position: int) -> tuple[np.ndarray, int]:
        for attempt in range(len(self)):
            index = int(self.indices[(position + attempt) % len(self)])
            try:
                return self.reader.read(index), index
            except CorruptImageError as error:
                if not self.skip_corrupt:
                    raise
                # Stand in the next readable image so batch shapes stay fixed.
                warnings.warn(f"skipping corrupt image (data.skip_corrupt_images=True): {error}", stacklevel=2)
        raise DataError("every image of the split is unreadable")

    def load(self, position: int, epoch: int = 0) -> np.ndarray:
        pixels, index = self._read_pixels(position)
        if self.training:
            rng = np.random.default_rng([self.seed, epoch, index])
        else:
            rng = np.random.default_rng([FIXED_BINARIZATION_SEED, index])
        if self.source.binarized:
            image = preprocessing.to_mnist_model_space(pixels, rng)
        else:
            image = preprocessing.preprocess_pixels(pixels, self.num_bits)
        if self.flip:
            image = preprocessing.maybe_flip_horizontally(image, rng)
        return np.ascontiguousarray(image)


def build_split(hp: Any, split: str, official_loader: OfficialLoader | None = None,
                npz_cache_dir: str | os.PathLike | None = None) -> ImageSplit:
    """The `split` ('train', 'val', 'synthesis', 'div_stats' or 'encode') of the configured source.

    'encode' is the whole train set in a fixed order without flips (encoding
    mode); 'div_stats' is `synthesis.div_stats_subset_ratio` of it.
    `official_loader` supplies the CIFAR-10/MNIST arrays (torchvision or tfds).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    source = get_source(hp)
    training_set = split in ("train", "div_stats", "encode")

    if source.storage == "official":
        if official_loader is None:
            raise ValueError(f"data.dataset_source={hp.data.dataset_source!r} needs an official_loader")
        official = official_loader(source.official_name)
        if training_set:
            reader, indices = ArrayReader(official.train, "train"), np.arange(len(official.train))
        else:
            reader = ArrayReader(official.test, "test")
            indices = official_test_indices(len(official.test), split, bool(getattr(hp.data, "full_test_set", False)))
    elif source.storage == "npz":
        key = _path_key(split)
        reader = NpzReader(getattr(hp.data, key), hp.data.target_res, hp.data.channels, f"data.{key}", npz_cache_dir)
        indices = np.arange(len(reader))
    else:
        reader = _folder_reader(hp, _path_key(split), source)
        indices = np.arange(len(reader))

    if split == "div_stats":
        indices = indices[div_stats_indices(len(indices), hp.synthesis.div_stats_subset_ratio, hp.run.seed)]
    elif split == "val":
        indices = indices[validation_indices(len(indices), hp.val.n_samples_for_validation, hp.run.seed)]

    return ImageSplit(
        reader,
        indices,
        training=split == "train",
        source=source,
        num_bits=hp.data.num_bits,
        flip=bool(hp.data.random_horizontal_flip),
        seed=hp.run.seed,
        skip_corrupt=bool(getattr(hp.data, "skip_corrupt_images", False)),
    )


def global_batch_size(hp: Any, split: str) -> int:
    """The configured global batch size of a split."""
    if split == "train":
        return hp.train.batch_size
    if split == "val":
        return hp.val.batch_size
    return hp.synthesis.batch_size


def official_data_dir(hp: Any, data_dir: str | os.PathLike | None) -> str:
    """Where CIFAR-10 / MNIST are downloaded to and read from.

    An explicit `data_dir` wins; else `data.download_dir` if the config has
    it; else '../datasets' relative to the working directory, the folder
    the original's scripts use for every dataset.
    """
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.fspath(getattr(hp.data, "download_dir", "../datasets"))


def run_split(hp: Any, split: str, read_official: OfficialReader, data_dir: str | os.PathLike | None = None,
              download: bool = True) -> ImageSplit:
    """`build_split` with the official datasets read by `read_official` (torchvision or tfds) from
    `official_data_dir(hp, data_dir)`."""
    root = official_data_dir(hp, data_dir)
    return build_split(hp, split, lambda name: read_official(name, root, download))


def split_batch_sizes(hp: Any, split: str, num_ranks: int, global_batch: int | None = None) -> tuple[int, int]:
    """The global batch of `split` (its configured one unless `global_batch` is given) and each rank's
    share of it; a batch that does not divide over the ranks raises ValueError naming the split."""
    if global_batch is None:
        global_batch = global_batch_size(hp, split)
    return global_batch, per_rank_batch_size(global_batch, num_ranks, f"batch size of split {split!r}")
