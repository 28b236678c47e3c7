"""JAX batching of the shared splits: a host-side iterator of numpy batches
shaped for the devices, filled by background threads."""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from efficient_vdvae_common.data import ImageSplit, epoch_order, rank_positions, run_split, split_batch_sizes
from efficient_vdvae_jax.data.official import load_official_images

_END = object()


def _device_batches(image_split: ImageSplit, global_batch: int, num_devices: int, *, epoch: int, seed: int,
                    training: bool, start_batch: int) -> list[list[np.ndarray]]:
    """For each global batch, the split positions of each device (device d = rank d)."""
    order = epoch_order(len(image_split), seed, epoch, training)
    per_device = [
        rank_positions(len(image_split), global_batch, d, num_devices, drop_last=training, start_batch=start_batch)
        for d in range(num_devices)
    ]
    return [[order[per_device[d][b]] for d in range(num_devices)] for b in range(len(per_device[0]))]


def _assemble(images: list[np.ndarray], slices: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-device images into (devices, per_device, H, W, C), zero-padding
    uneven last batches; the mask says which entries are real images."""
    width = max(len(s) for s in slices)
    batch = np.zeros((len(slices), width) + images[0].shape, dtype=np.float32)
    mask = np.zeros((len(slices), width), dtype=bool)
    start = 0
    for d, device_slice in enumerate(slices):
        count = len(device_slice)
        if count:
            batch[d, :count] = np.stack(images[start:start + count])
        mask[d, :count] = True
        start += count
    return batch, mask


def create_iterator(
    hp: Any,
    split: str,
    *,
    num_devices: int,
    epoch: int = 0,
    start_batch: int = 0,
    with_names: bool = False,
    prefetch: int = 2,
    batch_size: int | None = None,
    with_mask: bool = False,
    num_workers: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    devices: range | None = None,
) -> "PrefetchingIterator":
    """One epoch of batches shaped (num_devices, per_device_batch, H, W, C), float32.

    Yields `x`, or `(x, names)` with with_names (names: nested lists per
    device), with `mask` (bool, (num_devices, per_device_batch)) appended when
    with_mask. 'train' is shuffled by (run.seed, epoch), flipped, and drops the
    last incomplete batch; evaluation splits keep every image. An evaluation
    batch that cannot be split evenly over the devices is zero-padded, which
    needs with_mask=True to be told apart (never the case on one device).
    `batch_size` is the global batch (default: the split's configured one).
    Batches `start_batch`.. are produced (resume). `devices` (default: all)
    keeps only those device slices, shaped (len(devices), ...): a process of a
    multi-process run reads only its own devices' images of each global batch.
    """
    image_split = run_split(hp, split, load_official_images, data_dir, download)
    global_batch, _ = split_batch_sizes(hp, split, num_devices, batch_size)
    training = split == "train"
    batches = _device_batches(image_split, global_batch, num_devices, epoch=epoch, seed=hp.run.seed,
                              training=training, start_batch=start_batch)
    if not with_mask and any(len({len(s) for s in slices}) > 1 for slices in batches):
        raise ValueError(
            f"split {split!r} has {len(image_split)} images: its last batch does not divide over "
            f"{num_devices} devices; pass with_mask=True to get the padding mask"
        )
    if devices is not None:
        if not devices or devices.start < 0 or devices.stop > num_devices:
            raise ValueError(f"devices {devices} are not a part of the {num_devices} devices")
        batches = [slices[devices.start:devices.stop] for slices in batches]
    workers = max(1, len(os.sched_getaffinity(0)) if num_workers is None else num_workers)
    return PrefetchingIterator(image_split, batches, epoch, with_names, with_mask, max(1, prefetch), workers)


def _make_batch(image_split: ImageSplit, slices: list[np.ndarray], epoch: int, with_names: bool, with_mask: bool,
                pool: ThreadPoolExecutor):
    positions = [int(p) for s in slices for p in s]
    images = list(pool.map(lambda p: image_split.load(p, epoch), positions))
    x, mask = _assemble(images, slices)
    item: tuple = (x,)
    if with_names:
        item += ([[image_split.name(int(p)) for p in s] for s in slices],)
    if with_mask:
        item += (mask,)
    return item[0] if len(item) == 1 else item


def _produce(make_batch, batches: list, ready: queue.Queue, stop: threading.Event, workers: int) -> None:
    """Fill `ready` with batches, then _END (or the error raised); give up once `stop` is set."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        with ThreadPoolExecutor(workers) as pool:
            for slices in batches:
                if not put(make_batch(slices, pool)):
                    return
        put(_END)
    except BaseException as error:  # raised again in the consumer
        put(error)


class PrefetchingIterator:
    """Batches made `prefetch` ahead on a background thread (images decoded on a thread pool).

    Has `len()` (number of batches) and `close()`; errors of the producer are
    raised in the consumer. The thread holds no reference to the iterator, so
    an abandoned iterator is collected and its thread stops.
    """

    def __init__(self, image_split: ImageSplit, batches: list[list[np.ndarray]], epoch: int, with_names: bool,
                 with_mask: bool, prefetch: int, workers: int):
        self._num_batches = len(batches)
        self._ready: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._finished = False

        def make_batch(slices, pool):
            return _make_batch(image_split, slices, epoch, with_names, with_mask, pool)

        self._thread = threading.Thread(target=_produce, args=(make_batch, batches, self._ready, self._stop, workers),
                                        name="data-prefetch", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> "PrefetchingIterator":
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item = self._ready.get()
        if item is _END or isinstance(item, BaseException):
            self.close()
            if item is _END:
                raise StopIteration
            raise item
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()
