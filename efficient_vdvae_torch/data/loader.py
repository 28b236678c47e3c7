"""PyTorch batching of the shared splits: a Dataset, a sharded epoch sampler, a DataLoader."""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import torch
import torch.utils.data

from efficient_vdvae_common.data import DataError, ImageSplit, epoch_order, rank_positions, run_split, split_batch_sizes
from efficient_vdvae_torch.data.official import load_official_images


class SplitDataset(torch.utils.data.Dataset):
    """Images of a split as CHW float32 tensors (optionally with file names).

    Keys are (epoch, position) pairs, so that a worker process knows the
    epoch of the random flips and binarisation; a plain position means epoch 0.
    """

    def __init__(self, split: ImageSplit, with_names: bool = False):
        self.split = split
        self.with_names = with_names

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, position = key if isinstance(key, tuple) else (0, key)
        try:
            pixels = self.split.load(position, epoch)
        except DataError as error:  # e.g. a truncated file: handed on as data, raised in the main process
            return LoadFailure(error)
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        return (image, self.split.name(position)) if self.with_names else image


class LoadFailure:
    """A DataError met while reading an item, carried to the main process as an item.

    Raised in a worker, it would reach the main process wrapped in torch's
    multi-line "Caught ... in DataLoader worker process" traceback; carried as
    data, it is raised again there with its own one-line message (naming the file).
    """

    def __init__(self, error: DataError):
        self.error_type = type(error)
        self.message = str(error)

    def exception(self) -> DataError:
        return self.error_type(self.message)


def collate_or_fail(items: list) -> Any:
    """torch's default collation, unless an item failed: then that item's LoadFailure."""
    failure = next((item for item in items if isinstance(item, LoadFailure)), None)
    return failure if failure is not None else torch.utils.data.default_collate(items)


def _raise_failures(batches: Iterator) -> Iterator:
    for batch in batches:
        if isinstance(batch, LoadFailure):
            # Drop the workers now: a traceback kept by the caller would otherwise keep them until
            # garbage collection, whose shutdown then waits for their timeouts.
            del batches
            raise batch.exception()
        yield batch


class SplitDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose data errors surface as the reader's DataError, one line naming the file."""

    def __iter__(self) -> Iterator:
        return _raise_failures(super().__iter__())


class ShardedEpochSampler(torch.utils.data.Sampler):
    """This rank's share of every global batch of an epoch, as (epoch, position) keys.

    Like DistributedSampler it has `set_epoch`; `set_start_batch(k)` makes the
    next pass skip the first k batches without reading them (resume).
    """

    def __init__(self, num_items: int, global_batch: int, *, rank: int, world_size: int, seed: int,
                 shuffle: bool, drop_last: bool):
        self.num_items = num_items
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_batch(self, start_batch: int) -> None:
        """Skip the first `start_batch` batches of the next pass only."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be non-negative, got {start_batch}")
        self.start_batch = start_batch

    def _positions(self) -> np.ndarray:
        batches = rank_positions(self.num_items, self.global_batch, self.rank, self.world_size,
                                 drop_last=self.drop_last, start_batch=self.start_batch)
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.num_items, self.seed, self.epoch, self.shuffle)
        keys = [(self.epoch, int(order[p])) for p in self._positions()]
        self.start_batch = 0
        return iter(keys)

    def __len__(self) -> int:
        return len(self._positions())


def _default_num_workers(hp: Any, world_size: int) -> int:
    """run.num_cpus, at most this machine's CPUs shared by the ranks on this machine.

    torchrun's LOCAL_WORLD_SIZE counts those; on several nodes it is less than world_size.
    """
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(0, min(int(hp.run.num_cpus), len(os.sched_getaffinity(0)) // max(1, ranks_here)))


def create_dataloader(
    hp: Any,
    split: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int | None = None,
    with_names: bool = False,
    num_workers: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> SplitDataLoader:
    """A DataLoader of (B, C, H, W) float32 batches in the model's input space.

    split: 'train' (seeded shuffle, flips, last incomplete batch dropped),
    'val', 'synthesis', 'div_stats' or 'encode' (fixed order, every image).
    `batch_size` is per rank (default: the split's global batch / world_size).
    `data_dir`: where CIFAR-10 / MNIST live (default data.download_dir or
    ../datasets); `download=False` never touches the network.
    """
    image_split = run_split(hp, split, load_official_images, data_dir, download)
    per_rank = split_batch_sizes(hp, split, world_size)[1] if batch_size is None else batch_size
    training = split == "train"
    sampler = ShardedEpochSampler(len(image_split), per_rank * world_size, rank=rank, world_size=world_size,
                                  seed=hp.run.seed, shuffle=training, drop_last=training)
    workers = _default_num_workers(hp, world_size) if num_workers is None else num_workers
    return SplitDataLoader(
        SplitDataset(image_split, with_names),
        batch_size=per_rank,
        sampler=sampler,
        collate_fn=collate_or_fail,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=3 if workers > 0 else None,
        drop_last=False,  # the sampler already drops (train) or keeps (eval) the remainder
    )
