"""Which images each rank reads, in which order, at each epoch.

One rule for both frameworks: the epoch's order is a permutation seeded by
(seed, epoch); global batch b is the positions [b*G, (b+1)*G) of that order,
and rank r (or device r) takes the r-th contiguous slice of it. So a run can
resume at (epoch, batch) exactly, and the ranks of one global batch are
disjoint and together complete.
"""
from __future__ import annotations

import numpy as np


def epoch_order(num_items: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Indices 0..num_items-1 in the order of this epoch (identity when not shuffled)."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def per_rank_batch_size(global_batch: int, world_size: int, what: str = "batch size") -> int:
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if global_batch < 1 or global_batch % world_size:
        raise ValueError(f"{what} {global_batch} must be a positive multiple of the {world_size} ranks/devices")
    return global_batch // world_size


def num_global_batches(num_items: int, global_batch: int, drop_last: bool) -> int:
    return num_items // global_batch if drop_last else -(-num_items // global_batch)


def rank_positions(
    num_items: int, global_batch: int, rank: int, world_size: int, *, drop_last: bool, start_batch: int = 0
) -> list[np.ndarray]:
    """Positions (into the epoch order) that `rank` reads, one array per global batch.

    With drop_last the incomplete last global batch is left out (training).
    Without it (evaluation) nothing is dropped: the last global batch is
    divided as evenly as possible between the ranks.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    per_rank = per_rank_batch_size(global_batch, world_size)
    batches = []
    for b in range(start_batch, num_global_batches(num_items, global_batch, drop_last)):
        begin, end = b * global_batch, min((b + 1) * global_batch, num_items)
        if end - begin == global_batch:
            batches.append(np.arange(begin + rank * per_rank, begin + (rank + 1) * per_rank))
        else:
            batches.append(np.array_split(np.arange(begin, end), world_size)[rank])
    return batches
