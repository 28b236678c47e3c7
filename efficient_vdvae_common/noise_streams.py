"""Seeds of the training randomness that needs no saved RNG state, for both frameworks (numpy only).

Every draw comes from a generator (PyTorch) or key (JAX) derived from
(run.seed, stream, counter, ...), so a resumed run draws what an unbroken one
draws. The streams keep the uses apart: no two draw the same numbers.
"""
from __future__ import annotations

import numpy as np

TRAIN_STREAM = 0  # posterior eps of train batch c (counter: batches consumed so far, skipped updates included)
VALIDATION_STREAM = 1  # posterior eps of validation batch i (counter: i)
SUMMARY_STREAM = 2  # output samples of the last train batch at evaluation step s (counter: s)
VALIDATION_OUTPUT_STREAM = 3  # output samples of validation batch i (counter: i)


def stream_seed(seed: int, stream: int, counter: int, *more: int) -> int:
    """A 64-bit generator seed for (run seed, stream, counter, ...), well mixed by SeedSequence."""
    return int(np.random.SeedSequence([seed, stream, counter, *more]).generate_state(1, dtype=np.uint64)[0])


def rank_rows(global_batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first row, row count) of `rank` in a global batch, as the data sampler splits it:
    equal contiguous slices, an uneven last batch split as evenly as possible."""
    rows = np.array_split(np.arange(global_batch), world_size)[rank]
    return (int(rows[0]) if rows.size else 0), int(rows.size)
