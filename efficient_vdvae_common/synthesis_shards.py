"""How synthesis spreads its images over devices (JAX) or ranks (PyTorch), for both frameworks.

The batches are those of one device: global batch b holds images
b*B .. min((b+1)*B, N) - 1 of the split (B = synthesis.batch_size) in its
first rows. On n shards (devices or ranks) it is padded to n * w rows,
w = ceil(B / n), and shard s holds rows s*w .. s*w + w - 1; padding rows come
last and are masked out. Every image is thus in exactly one shard, in the row
it has on one device, whatever n is: noise drawn per global batch row (JAX:
one key per global batch, and threefry keys give row r the same numbers in a
batch of B or of n * w rows) or per image (PyTorch: `noise_streams.stream_seed`) is the
same on any number of devices. Shards in order hold consecutive rows, so
concatenating their results in shard order gives the one-device order.
"""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from efficient_vdvae_common.data import ImageSplit

# Per-image noise streams of PyTorch synthesis (noise_streams.stream_seed): one per use, so that no two draws
# share numbers.
POSTERIOR_STREAM = 10  # posterior eps (reconstruction, div_stats, encoding)
MASKED_PRIOR_STREAM = 11  # prior samples of masked-off or pruned variates (mask_reconstruction, encoding, decoding)
OUTPUT_STREAM = 12  # output-distribution samples (reconstruction, decoding)
IMPORTANCE_STREAM = 13  # importance samples (image index, sample index)
GENERATION_STREAM = 20  # prior eps of generated image i (every temperature setting reuses them)
GENERATION_OUTPUT_STREAM = 21


def shard_width(batch_size: int, num_shards: int) -> int:
    """Rows per shard of a global batch of `batch_size` images over `num_shards` shards."""
    if batch_size < 1 or num_shards < 1:
        raise ValueError(f"need batch_size >= 1 and num_shards >= 1, got {batch_size}, {num_shards}")
    return math.ceil(batch_size / num_shards)


@dataclass(frozen=True)
class ShardedBatch:
    """Global batch `index`: images `first` .. `first + size - 1` of a split (or of the generated images),
    in rows 0 .. size - 1 of `num_shards` x `width` rows."""

    index: int
    first: int
    size: int
    width: int
    num_shards: int

    @property
    def padded_size(self) -> int:
        return self.num_shards * self.width

    def rows(self, shards: range) -> range:
        """The real rows (of the padded batch) that `shards` hold: one contiguous block, maybe empty."""
        return range(min(shards.start * self.width, self.size), min(shards.stop * self.width, self.size))

    def images(self, shards: range) -> range:
        """Global image indices of `shards`' real rows."""
        rows = self.rows(shards)
        return range(self.first + rows.start, self.first + rows.stop)

    def mask(self, shards: range) -> np.ndarray:
        """(len(shards) * width,) True on `shards`' real rows."""
        rows = np.arange(shards.start * self.width, shards.stop * self.width)
        return rows < self.size


def sharded_batches(num_items: int, batch_size: int, num_shards: int) -> list[ShardedBatch]:
    """Every global batch of `num_items` images in batches of `batch_size`, laid out over `num_shards`."""
    width = shard_width(batch_size, num_shards)
    return [ShardedBatch(index=b, first=first, size=min(batch_size, num_items - first), width=width,
                         num_shards=num_shards)
            for b, first in enumerate(range(0, num_items, batch_size))]


def check_shards(shards: range, num_shards: int) -> None:
    if not shards or shards.start < 0 or shards.stop > num_shards or shards.step != 1:
        raise ValueError(f"shards {shards} are not a contiguous part of the {num_shards} shards")


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` zero-padded along its first axis to `rows` rows."""
    missing = rows - len(array)
    if missing < 0:
        raise ValueError(f"{len(array)} rows do not fit in {rows}")
    if not missing:
        return array
    return np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])


@dataclass
class ShardData:
    """One global batch as a process sees it: its shards' images, zero-padded (NHWC float32), the mask of
    its real rows, and the names of EVERY image of the global batch (known without reading them)."""

    batch: ShardedBatch
    x: np.ndarray  # (len(shards) * width, H, W, C)
    mask: np.ndarray  # (len(shards) * width,)
    names: list[str]  # the global batch's images, in order


def shard_data(image_split: ImageSplit, batch_size: int, num_shards: int, shards: range,
               workers: int = 4) -> Iterator[ShardData]:
    """The split's global batches, reading only the images of `shards` (one batch read ahead, on threads)."""
    check_shards(shards, num_shards)
    batches = sharded_batches(len(image_split), batch_size, num_shards)
    if not batches:
        return
    # The shape of a padding row, for a process whose shards hold no image of a batch.
    image_shape = image_split.load(0).shape

    def read(batch: ShardedBatch, pool: ThreadPoolExecutor) -> ShardData:
        x = np.zeros((len(shards) * batch.width,) + image_shape, np.float32)
        positions = batch.images(shards)
        for row, image in enumerate(pool.map(image_split.load, positions)):
            x[row] = image
        names = [image_split.name(p) for p in range(batch.first, batch.first + batch.size)]
        return ShardData(batch, x, batch.mask(shards), names)

    with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as ahead:
        pending: Future = ahead.submit(read, batches[0], pool)
        for following in list(batches[1:]) + [None]:
            current = pending.result()
            if following is not None:
                pending = ahead.submit(read, following, pool)
            yield current


def in_shard_order(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Every shard's rows, concatenated in shard order: the one-device order."""
    return np.concatenate(list(parts))
