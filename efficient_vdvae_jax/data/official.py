"""CIFAR-10 and MNIST through tensorflow-datasets, prepared once into a data folder.

Prepared as array_record under `<data_dir>/tensorflow_datasets/` and read back
with `tfds.data_source`, which needs no TensorFlow. Preparing (downloading and
converting) does need TensorFlow: install `tensorflow-cpu` for that one step.

tfds stores examples in the order of a hash of their keys, not in the order
of the official files; the protocol (SPEC section 1) splits the test set by
its official order, so that order is restored here: CIFAR-10 from its `id`
feature, MNIST (no id) from tfds's key hashing (key = index in the file).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from efficient_vdvae_common.data import DataError, OfficialImages

_SPLITS = ("train", "test")


def tfds_data_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "tensorflow_datasets")


def _prepare(builder, name: str, download: bool) -> None:
    if not download:
        raise DataError(f"{name} is not prepared in {builder.data_dir} and downloading is disabled")
    try:
        builder.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as error:
        raise DataError(
            f"tensorflow-datasets needs TensorFlow to download and prepare {name} once "
            f"({error}); run `pip install tensorflow-cpu` or copy a prepared array_record "
            f"copy into {tfds_data_dir('<data.download_dir>')}. Reading it afterwards needs no TensorFlow."
        ) from None
    except OSError as error:
        raise DataError(f"could not download {name} into {builder.data_dir}: {error}") from None


def official_order(name: str, split: str, records: list[dict]) -> np.ndarray:
    """Indices that put tfds's stored records back into the official file order."""
    if "id" in records[0]:  # CIFAR-10: ids are '<split>_<index>'
        ids = [r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"]) for r in records]
        return np.argsort([int(i.rsplit("_", 1)[1]) for i in ids], kind="stable")
    # Stored position p holds the example whose key has the p-th smallest hash,
    # the hash being salted with the split's name.
    from tensorflow_datasets.core import hashing  # imported here: tfds pulls in TensorFlow when present

    hasher = hashing.Hasher(split)
    keys_in_stored_order = np.argsort([hasher.hash_key(k) for k in range(len(records))], kind="stable")
    order = np.empty(len(records), dtype=np.int64)
    order[keys_in_stored_order] = np.arange(len(records))
    return order


@functools.lru_cache(maxsize=4)
def load_official_images(name: str, data_dir: str, download: bool) -> OfficialImages:
    """The official train and test images (uint8, NHWC, official file order)."""
    # Imported here: tfds pulls in TensorFlow when present, seconds that runs on
    # custom or ImageNet data should not pay.
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=tfds_data_dir(data_dir), file_format="array_record")
    if not builder.is_prepared():
        _prepare(builder, name, download)
    arrays = []
    for split in _SPLITS:
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        order = official_order(name, split, records)
        arrays.append(np.stack([np.asarray(records[i]["image"], dtype=np.uint8) for i in order]))
    return OfficialImages(*arrays)
