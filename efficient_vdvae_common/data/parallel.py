"""Map a function over many files with a progress bar, in processes when asked to."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

from tqdm import tqdm


def map_with_progress(function: Callable, tasks: Sequence, workers: int, description: str) -> Iterable:
    """`function` over `tasks` in order; `workers` > 1 uses that many processes."""
    if workers <= 1:
        results = map(function, tasks)
        return list(tqdm(results, total=len(tasks), desc=description))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(function, tasks, chunksize=32), total=len(tasks), desc=description))
