"""What the benchmarks share: thread limits, random batches, timing loops and the JSON result line.

Import this before torch or JAX: `limit_threads` must run before either framework starts its thread pools.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from efficient_vdvae_common.architecture import is_binarized_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent


def limit_threads(threads: int | None) -> int:
    """Pin the process to `threads` cores (both frameworks size their pools from the affinity mask).

    Returns the number of cores the process may use.
    """
    if threads:
        available = sorted(os.sched_getaffinity(0))
        if threads > len(available):
            raise SystemExit(f"--threads {threads}: only {len(available)} cores are available")
        os.sched_setaffinity(0, available[:threads])
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(threads)
    return len(os.sched_getaffinity(0))


def common_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=("torch", "jax"), required=True)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "egs" / "cifar10_baseline.cfg",
                        help="a .cfg file (default: egs/cifar10_baseline.cfg)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (compiling) one")
    parser.add_argument("--threads", type=int, default=None, help="CPU cores to use (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    return parser


def random_images(hp: Any, batch: int, channels_last: bool, seed: int = 0) -> np.ndarray:
    """A batch in model space: 8-bit (or binary) random images scaled to [-1, 1] (binary: {0, 1})."""
    rng = np.random.default_rng(seed)
    res, channels = hp.data.target_res, hp.data.channels
    shape = (batch, res, res, channels) if channels_last else (batch, channels, res, res)
    if is_binarized_mnist(hp):
        return (rng.uniform(size=shape) < 0.5).astype(np.float32)
    return (rng.integers(0, 256, size=shape) / 127.5 - 1.0).astype(np.float32)


def time_calls(call: Callable[[int], Any], steps: int, warmup: int) -> tuple[float, list[float], list[float]]:
    """Seconds of the first call (compilation, allocation), then wall and CPU seconds of each timed call.

    `call(i)` must block until its work is done. CPU seconds (all threads of this
    process) are what to compare on a shared machine: other processes stretch the
    wall clock of a step, hardly its CPU time.
    """
    started = time.perf_counter()
    call(0)
    first_s = time.perf_counter() - started
    for i in range(warmup):
        call(1 + i)
    times, cpu_times = [], []
    for i in range(steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        call(1 + warmup + i)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return first_s, times, cpu_times


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def result_line(args: argparse.Namespace, threads: int, device: str, first_s: float, times: list[float],
                cpu_times: list[float], images_per_call: int, peak_memory_gb: float, **extra: Any) -> str:
    median = statistics.median(times) if times else float("nan")
    mean = statistics.fmean(times) if times else float("nan")
    median_cpu = statistics.median(cpu_times) if cpu_times else float("nan")
    record = {
        "framework": args.framework,
        "config": Path(args.config).stem,
        "device": device,
        "threads": threads,
        "batch": args.batch,
        "steps": len(times),
        "median_s_per_step": round(median, 5),
        "mean_s_per_step": round(mean, 5),
        "median_cpu_s_per_step": round(median_cpu, 5),
        "images_per_s": round(images_per_call / median, 3) if times else None,
        "compile_s": round(first_s, 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "peak_memory_gb": round(peak_memory_gb, 3),
        "overrides": list(args.set),
        **extra,
    }
    return json.dumps(record)
