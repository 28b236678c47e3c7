"""Framework-agnostic data: readers per on-disk format, splits, ordering, preprocessing.

The PyTorch and JAX loaders wrap `run_split` and the ordering helpers and
add only their batching.
"""
from efficient_vdvae_common.data.ordering import epoch_order, num_global_batches, per_rank_batch_size, rank_positions
from efficient_vdvae_common.data.readers import CorruptImageError, DataError
from efficient_vdvae_common.data.splits import (
    SPLITS,
    ImageSplit,
    OfficialImages,
    build_split,
    get_source,
    global_batch_size,
    official_data_dir,
    run_split,
    split_batch_sizes,
)

__all__ = [
    "SPLITS",
    "CorruptImageError",
    "DataError",
    "ImageSplit",
    "OfficialImages",
    "build_split",
    "epoch_order",
    "get_source",
    "global_batch_size",
    "num_global_batches",
    "official_data_dir",
    "per_rank_batch_size",
    "rank_positions",
    "run_split",
    "split_batch_sizes",
]
